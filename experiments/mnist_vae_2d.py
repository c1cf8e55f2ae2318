"""Convolutional VAE with a 2-d latent: the experiment for latent maps and manifold grids.

    gen-jax train experiments/mnist_vae_2d.py --workdir runs/mnist_vae_2d

The encoded test set and the decoded manifold are drawn by gen_jax.latent; their PNGs are linked
from README.md once measured (RESULTS.md).
"""

from gen_jax.config import vae_config

EPOCH = 60_000 // 128


def get_config():
    config = vae_config()
    config.model.latent_dim = 2
    config.train.num_steps = 30 * EPOCH
    config.train.eval_every = 10 * EPOCH
    config.train.checkpoint_every = 5 * EPOCH
    config.optimizer.schedule = "cosine"
    return config
