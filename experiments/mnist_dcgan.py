"""DCGAN on MNIST: non-saturating loss; a discriminator without normalisation trained with an R1
penalty (weight 1, Mescheder et al., 2018) that downsamples by space_to_depth + 2x2 convolutions
(faster steps than stride-2 convolutions under R1 on a CPU, benchmarks/README.md), batch
norm in the generator; Adam (b1 0.5) for each, 5e-4 for 60 epochs, then decayed linearly to zero
over 40 more; batch 64, EMA generator; scored in the baseline CNN classifier's features. The
recipe is `r1_dcgan_config` (gen_jax/recipes.py), shared with the Fashion-MNIST and CIFAR-10 runs.

    gen-jax train experiments/mnist_cnn.py --workdir runs/mnist_cnn    # the feature space
    gen-jax train experiments/mnist_dcgan.py --workdir runs/mnist_dcgan

Goal: classifier-space FID <= 3x the real-vs-real floor, IS >= 9.0, all 10 classes with none
under 5% of samples. Measured (the FID goal is not reached): RESULTS.md, section
'GAN family (MNIST, ...)'.
"""

from gen_jax.recipes import QUICK_GAN, r1_dcgan_config

EPOCH = 60_000 // 64


def get_config():
    config = r1_dcgan_config(EPOCH)
    config.task.classifier_workdir = "runs/mnist_cnn"
    config.train.num_steps = 100 * EPOCH  # 60 epochs at 5e-4, then 40 down to zero
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
EXPECTED = {  # the goal: FID at most 3x the real-vs-real floor in the same classifier's features
    "fid_over_floor": ("<=", 3.0),
    "inception_score": (">=", 9.0),
    "min_class_fraction": (">=", 0.05),
}
QUICK = {"overrides": QUICK_GAN, "expected": {"fid": (21.2, 6.0), "inception_score": (3.23, 1.0)}}
REQUIRES = {"task.classifier_workdir": "mnist_cnn"}  # its features score the samples
