"""Baseline DCGAN on CIFAR-10 (JPEG copy), an image folder: the MNIST recipe (`r1_dcgan_config`,
experiments/mnist_dcgan.py: non-saturating loss, an R1-penalised discriminator without
normalisation, an EMA generator, Adam 5e-4 decayed linearly to zero over the last 40%) and its
network sizes (an 8x8 -> 32x32 generator of 128, 64, 32 features; a 64, 128 discriminator),
batch 64, 4 epochs; scored in the features of the CIFAR-10 baseline classifier. It proves the GAN
trains on 32x32x3 folder data.

    gen-jax train experiments/cifar10_cnn.py --workdir runs/cifar10_cnn  # the feature space
    gen-jax train experiments/cifar10_dcgan.py --workdir runs/cifar10_dcgan

Measured: RESULTS.md, section 'VAE and DCGAN on Fashion-MNIST and CIFAR-10 (JPEG copy)'.

Its final evaluation also scores 10k samples in the FID Inception-v3's features against the
train split's 50k (`inception_*` metrics, docs/inception.md), beside a published DCGAN on
canonical CIFAR-10. Measured: RESULTS.md, section 'Inception-v3 scores: ...'.
"""

from gen_jax.recipes import QUICK_GAN, r1_dcgan_config

EPOCH = 50_000 // 64


def get_config():
    config = r1_dcgan_config(EPOCH)
    config.data.folder = "../shared/data/cifar10_jpeg"  # relative to where you run gen-jax
    config.task.classifier_workdir = "runs/cifar10_cnn"
    config.task.inception_samples = 10_000  # + the papers' Inception-v3 scores (docs/inception.md)
    config.train.num_steps = 4 * EPOCH
    config.train.checkpoint_every = EPOCH
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
# measured once (Intel Xeon VM); a 4-epoch GAN, which another CPU's rounding moves by ~20%
EXPECTED = {"fid": (25.6, 5.0), "inception_score": (1.61, 0.2)}
# QUICK: measured once (Intel Xeon VM), scored by the quick (200-step) classifier; a young GAN,
# which another CPU's rounding moves a lot: ~30%, as mnist_dcgan's
QUICK = {"overrides": QUICK_GAN, "expected": {"fid": (86.3, 26.0), "inception_score": (1.13, 0.35)}}
REQUIRES = {"task.classifier_workdir": "cifar10_cnn"}  # its features score the samples
