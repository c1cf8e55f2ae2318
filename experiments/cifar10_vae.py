"""Baseline convolutional VAE, 64-d latent, on CIFAR-10 (JPEG copy), an image folder, under a
discretized logistic likelihood (256 levels per pixel and channel); Adam 1e-3 with cosine decay,
batch 128, 8 epochs. It proves the VAE trains on 32x32x3 folder data.

    gen-jax train experiments/cifar10_vae.py --workdir runs/cifar10_vae

Reports the test NLL (nats, importance-sampled with k=100) and bits per dimension beside the
negative ELBO. A baseline: 8 epochs are far from converged (6.415 bits/dim after 4, k=10).
Measured: RESULTS.md, section 'VAE and DCGAN on Fashion-MNIST and CIFAR-10 (JPEG copy)'.

Its final evaluation also scores 10k samples in the FID Inception-v3's features against the
train split's (`inception_*` metrics, docs/inception.md): not yet measured for this recipe.
"""

from gen_jax.recipes import QUICK_VAE, vae_config

EPOCH = 50_000 // 128


def get_config():
    config = vae_config()
    config.data.folder = "../shared/data/cifar10_jpeg"  # relative to where you run gen-jax
    config.task.likelihood = "logistic"
    config.task.eval_samples = 10  # the periodic evaluations' NLL: a quick, looser bound
    config.task.final_eval_samples = 100  # k=1000 would take ~30 min on a 2-core CPU
    config.task.inception_samples = 10_000  # + the papers' Inception-v3 scores (docs/inception.md)
    config.model.latent_dim = 64
    config.model.hidden = 512
    config.optimizer.schedule = "cosine"
    config.train.num_steps = 8 * EPOCH
    config.train.eval_every = 4 * EPOCH
    config.train.checkpoint_every = 2 * EPOCH
    # 4 slices, as trained for RESULTS: as fast as 1 on 2 CPU cores since benchmarks/README.md's
    # finding 16 (1.4x faster before it); 1 on a GPU
    config.train.batch_splits = 4
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
# measured once (Intel Xeon VM); another CPU's rounding moves an 8-epoch run by a few tenths of
# a percent: 0.05 bits/dim (~110 nats)
EXPECTED = {"nll": (13514.5, 110.0), "bits_per_dim": (6.347, 0.05)}
# QUICK: measured once (Intel Xeon VM); 200 steps of a young network, which another CPU's
# rounding moves by a few percent: 450 nats (0.21 bits/dim)
QUICK = {
    "overrides": QUICK_VAE,
    "expected": {"nll": (15536.0, 450.0), "bits_per_dim": (7.296, 0.21)},
}
