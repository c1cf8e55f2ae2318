"""DCGAN with the hinge loss: the generator and discriminator of experiments/mnist_dcgan.py as
first set up (batch norm in the discriminator, no R1 penalty, a constant 2e-4: `gan_config()`).

    gen-jax train experiments/mnist_hinge_gan.py --workdir runs/mnist_hinge_gan

(needs the classifier run runs/mnist_cnn, see mnist_dcgan.py). 5 epochs, to compare with the
non-saturating loss over the same 5 epochs. Measured: RESULTS.md, section 'GAN family (MNIST, ...)'.
"""

from gen_jax.recipes import QUICK_GAN, gan_config

EPOCH = 60_000 // 64


def get_config():
    config = gan_config()
    config.task.loss = "hinge"
    config.data.batch_size = 64
    config.task.classifier_workdir = "runs/mnist_cnn"
    config.train.num_steps = 5 * EPOCH
    config.train.eval_every = EPOCH
    config.train.checkpoint_every = EPOCH
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
EXPECTED = {"fid": (32.6, 5.0), "inception_score": (7.26, 0.4)}  # measured (RESULTS.md)
QUICK = {"overrides": QUICK_GAN, "expected": {"fid": (20.4, 6.0), "inception_score": (3.38, 1.0)}}
REQUIRES = {"task.classifier_workdir": "mnist_cnn"}  # its features score the samples
