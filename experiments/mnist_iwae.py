"""IWAE: the convolutional 32-d VAE trained on the importance-weighted bound with k=5 samples.

    gen-jax train experiments/mnist_iwae.py --workdir runs/mnist_iwae

Goal: test NLL (k=1000) below the same network trained on the ELBO (experiments/mnist_vae.py).
Measured value: RESULTS.md.
"""

from gen_jax.config import QUICK_VAE, vae_config

EPOCH = 60_000 // 128


def get_config():
    config = vae_config()
    config.task.objective = "iwae"
    config.task.train_samples = 5
    config.train.num_steps = 100 * EPOCH
    config.train.eval_every = 25 * EPOCH
    config.train.checkpoint_every = 5 * EPOCH
    config.optimizer.schedule = "cosine"
    config.train.batch_splits = 4  # 2x faster on a 2-core CPU (benchmarks/README.md); 1 on a GPU
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
EXPECTED = {"nll": ("<=", 84.0)}  # the goal; not yet measured at full length (RESULTS.md)
QUICK = {"overrides": QUICK_VAE, "expected": {"neg_elbo": (159.8, 8.0), "nll": (144.5, 8.0)}}
