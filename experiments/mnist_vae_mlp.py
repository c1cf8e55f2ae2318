"""The Flax example's VAE: MLP 784-500-20 encoder and 20-500-784 decoder, Adam 1e-3, batch 128,
10 epochs, on dynamically binarised MNIST.

    gen-jax train experiments/mnist_vae_mlp.py --workdir runs/mnist_vae_mlp

Its test negative ELBO compares with the Flax example's about 104 nats (that example uses the
fixed binarisation of `binarized_mnist`).
Measured: RESULTS.md, section 'VAE family (MNIST test set, ...)'.
"""

from gen_jax.recipes import QUICK_VAE, vae_config

EPOCH = 60_000 // 128


def get_config():
    config = vae_config()
    config.model.name = "mlp_vae"
    config.model.latent_dim = 20
    config.model.hidden = 500
    config.train.num_steps = 10 * EPOCH
    config.train.eval_every = EPOCH
    config.train.checkpoint_every = EPOCH
    config.train.steps_per_call = 4  # fewer dispatches: faster on a CPU (benchmarks/README.md)
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
EXPECTED = {"neg_elbo": (102.14, 1.0), "nll": (96.77, 1.0)}
QUICK = {"overrides": QUICK_VAE, "expected": {"neg_elbo": (134.8, 8.0), "nll": (130.4, 8.0)}}
