"""Class-conditional DCGAN (cGAN): one-hot labels beside the generator's noise, a projection
discriminator; non-saturating loss. Sample grids have one row per class.

    gen-jax train experiments/mnist_cgan.py --workdir runs/mnist_cgan

(needs the classifier run runs/mnist_cnn, see mnist_dcgan.py). Evaluation samples cycle through
the classes, so the class histogram should be flat. Measured values: RESULTS.md.
"""

from gen_jax.config import QUICK_GAN, gan_config

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
EXPECTED = {"fid": (0.0, 1e9), "inception_score": (0.0, 1e9)}
QUICK = {"overrides": QUICK_GAN, "expected": {"fid": (21.0, 6.0), "inception_score": (3.45, 1.0)}}
REQUIRES = {"task.classifier_workdir": "mnist_cnn"}  # its features score the samples
