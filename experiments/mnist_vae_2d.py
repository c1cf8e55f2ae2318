"""Convolutional VAE with a 2-d latent, 10 epochs: the experiment for latent maps and manifold
grids. Its NLL is estimated with 100 importance samples (a 2-d posterior needs few; the k=1000
number belongs to the 32-d VAE).

    gen-jax train experiments/mnist_vae_2d.py --workdir runs/mnist_vae_2d

Draws the latent map and manifold grid of docs/figures (with gen_jax.latent; README.md shows
how). Measured: RESULTS.md, section 'VAE family (MNIST test set, ...)'.
"""

from gen_jax.recipes import QUICK_VAE, vae_config

EPOCH = 60_000 // 128


def get_config():
    config = vae_config()
    config.model.latent_dim = 2
    config.task.final_eval_samples = 100
    config.train.num_steps = 10 * EPOCH
    config.train.eval_every = 5 * EPOCH
    config.train.checkpoint_every = 5 * EPOCH
    config.optimizer.schedule = "cosine"
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
EXPECTED = {"neg_elbo": (143.17, 2.0), "nll": (140.62, 2.0)}
QUICK = {"overrides": QUICK_VAE, "expected": {"neg_elbo": (179.5, 8.0), "nll": (178.5, 8.0)}}
