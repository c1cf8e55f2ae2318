"""WGAN-GP on MNIST (Gulrajani et al., 2017): Wasserstein loss, gradient penalty 10, 5 critic
steps per generator step, a layer-normalised critic that downsamples by space_to_depth (the
penalty differentiates the critic twice: faster steps than stride-2 convolutions on a CPU,
benchmarks/README.md), Adam 1e-4 (b1 0.5, b2 0.9) each.

    gen-jax train experiments/mnist_wgan_gp.py --workdir runs/mnist_wgan_gp

Each step takes 5 x 64 real images, one slice of 64 per critic step (with its own noise and
penalty key), so an epoch is 187 generator steps; 10 epochs. Needs the classifier run
runs/mnist_cnn (see mnist_dcgan.py). Measured: RESULTS.md, section 'GAN family (MNIST, ...)'.
"""

from gen_jax.recipes import QUICK_GAN, gan_config

EPOCH = 60_000 // 320


def get_config():
    config = gan_config()
    config.task.loss = "wasserstein"
    config.task.gradient_penalty = 10.0
    config.task.critic_steps = 5
    config.model.discriminator_norm = "layer"
    config.model.downsampling = "space_to_depth"  # the penalty differentiates D twice: 2x faster
    for player in ("generator", "discriminator"):
        config.optimizer[player].learning_rate = 1e-4
        config.optimizer[player].b2 = 0.9
    config.data.batch_size = 320
    config.task.classifier_workdir = "runs/mnist_cnn"
    config.train.num_steps = 10 * EPOCH
    config.train.eval_every = 5 * EPOCH
    config.train.checkpoint_every = 5 * EPOCH
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
EXPECTED = {"fid": (31.9, 4.5), "inception_score": (7.26, 0.4)}  # measured (RESULTS.md)
QUICK = {
    "overrides": [*QUICK_GAN, "--config.train.num_steps=60"],
    "expected": {"fid": (84.0, 20.0), "inception_score": (1.09, 0.5)},
}
REQUIRES = {"task.classifier_workdir": "mnist_cnn"}  # its features score the samples
