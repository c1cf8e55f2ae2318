"""DDPM on MNIST (Ho et al., 2020, in continuous time): the U-Net of `diffusion_config` (0.45M
parameters) predicts the noise of x_t = a(t) image + s(t) noise on the cosine schedule (Nichol &
Dhariwal, 2021); batch 64, Adam 1e-3 with warm-up and cosine decay, EMA 0.999, 6 epochs. Sampled
by deterministic DDIM (Song et al., 2021) in 20 steps; scored in the baseline CNN classifier's
features.

    gen-jax train experiments/mnist_cnn.py --workdir runs/mnist_cnn    # the feature space
    gen-jax train experiments/mnist_ddpm.py --workdir runs/mnist_ddpm

The same budget as experiments/mnist_flow.py, for the comparison of the two objectives.
Measured: RESULTS.md, section 'Diffusion and flow matching (MNIST, ...)' (`mnist_ddpm`).
"""

from gen_jax.recipes import QUICK_DIFFUSION, diffusion_config


def get_config():
    config = diffusion_config()  # objective "ddpm", schedule "cosine", prediction "epsilon"
    config.task.sample_steps = 20  # DDIM: one network evaluation per step
    config.task.eval_steps = 10
    config.task.classifier_workdir = "runs/mnist_cnn"
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
# EXPECTED: measured once (Intel Xeon VM; RESULTS.md). Another CPU's rounding moves a trained
# generator's FID by up to ~15% (mnist_cgan: 9.4 +- 1.5), its IS by a few per cent
EXPECTED = {
    "fid": (14.27, 2.1),
    "inception_score": (8.18, 0.25),
    "min_class_fraction": (">=", 0.05),
}
# QUICK: measured once (Intel Xeon VM), scored by the quick (300-step) classifier; a young model,
# which another CPU's rounding moves a lot: ~30%, as the GANs'
QUICK = {
    "overrides": QUICK_DIFFUSION,
    "expected": {"fid": (47.4, 14.0), "inception_score": (1.87, 0.55)},
}
REQUIRES = {"task.classifier_workdir": "mnist_cnn"}  # its features score the samples
