"""Class-conditional DCGAN (cGAN): one-hot labels beside the generator's noise, a projection
discriminator; non-saturating loss. Sample grids have one row per class.

    gen-jax train experiments/mnist_cgan.py --workdir runs/mnist_cgan

(needs the classifier run runs/mnist_cnn, see mnist_dcgan.py). Evaluation samples cycle through
the classes, so the class histogram should be flat. 5 epochs.
Measured: RESULTS.md, section 'GAN family (MNIST, ...)'.
"""

from gen_jax.recipes import QUICK_GAN, gan_config

EPOCH = 60_000 // 64


def get_config():
    config = gan_config()
    config.model.num_classes = 10
    config.data.batch_size = 64
    config.task.classifier_workdir = "runs/mnist_cnn"
    config.train.num_steps = 5 * EPOCH
    config.train.eval_every = EPOCH
    config.train.checkpoint_every = EPOCH
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
EXPECTED = {"fid": (9.4, 1.5), "inception_score": (9.9, 0.1)}  # measured (RESULTS.md)
QUICK = {"overrides": QUICK_GAN, "expected": {"fid": (21.0, 6.0), "inception_score": (3.45, 1.0)}}
REQUIRES = {"task.classifier_workdir": "mnist_cnn"}  # its features score the samples
