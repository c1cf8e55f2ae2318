"""DCGAN on Fashion-MNIST: the MNIST recipe (`r1_dcgan_config`, experiments/mnist_dcgan.py:
non-saturating loss, an R1-penalised discriminator without normalisation, an EMA generator, Adam
5e-4 decayed linearly to zero over the last 40%), batch 64, 8 epochs; scored in the features of
the Fashion-MNIST classifier.

    gen-jax train experiments/fashion_mnist_cnn.py --workdir runs/fashion_mnist_cnn  # features
    gen-jax train experiments/fashion_mnist_dcgan.py --workdir runs/fashion_mnist_dcgan

Measured: RESULTS.md, section 'VAE and DCGAN on Fashion-MNIST and CIFAR-10 (JPEG copy)'.
The floor is low (this classifier's features of real training and test images barely differ), so
the ratio to it is large although the FID is of the order of the MNIST DCGAN's.
"""

from gen_jax.recipes import QUICK_GAN, r1_dcgan_config

EPOCH = 60_000 // 64


def get_config():
    config = r1_dcgan_config(EPOCH)
    config.data.name = "fashion_mnist"
    config.task.classifier_workdir = "runs/fashion_mnist_cnn"
    config.train.num_steps = 8 * EPOCH
    config.train.eval_every = 4 * EPOCH
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
# measured once (Intel Xeon VM); an 8-epoch GAN, which another CPU's rounding moves by ~20%
EXPECTED = {
    "fid": (5.67, 1.2),
    "inception_score": (2.63, 0.3),
    "min_class_fraction": (">=", 0.05),
}
# QUICK: measured once (Intel Xeon VM), scored by the quick (300-step) classifier; a young GAN,
# which another CPU's rounding moves a lot: ~30%, as mnist_dcgan's
QUICK = {"overrides": QUICK_GAN, "expected": {"fid": (42.8, 13.0), "inception_score": (1.40, 0.4)}}
REQUIRES = {"task.classifier_workdir": "fashion_mnist_cnn"}  # its features score the samples
