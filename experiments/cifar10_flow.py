"""Baseline flow matching on CIFAR-10 (JPEG copy), an image folder: experiments/mnist_flow.py's
recipe (`flow_config`: rectified flow, the U-Net of 16, 32, 32 features at 32, 16, 8 pixels,
batch 64, Adam 1e-3 with warm-up and cosine decay, EMA 0.999; Heun in 10 steps, 19 network
evaluations) with random horizontal flips, 4 epochs; scored in the features of the CIFAR-10
baseline classifier. Like experiments/cifar10_dcgan.py, it proves the family trains on 32x32x3
folder data: a U-Net this small is far from a good CIFAR-10 model.

    gen-jax train experiments/cifar10_cnn.py --workdir runs/cifar10_cnn  # the feature space
    gen-jax train experiments/cifar10_flow.py --workdir runs/cifar10_flow

Measured: RESULTS.md, section 'Diffusion and flow matching (MNIST, ...)' (`cifar10_flow`).

Its final evaluation also scores 10k samples in the FID Inception-v3's features against the
train split's 50k (`inception_*` metrics, docs/inception.md), beside DDPM on canonical CIFAR-10.
Measured: RESULTS.md, section 'Inception-v3 scores: ...'.
"""

from gen_jax.recipes import QUICK_DIFFUSION, flow_config

EPOCH = 50_000 // 64


def get_config():
    config = flow_config()
    config.data.folder = "../shared/data/cifar10_jpeg"  # relative to where you run gen-jax
    config.data.preprocess = ("horizontal_flip", "scale_to_symmetric")
    config.task.classifier_workdir = "runs/cifar10_cnn"
    config.task.inception_samples = 10_000  # + the papers' Inception-v3 scores (docs/inception.md)
    config.train.update(
        {"num_steps": 4 * EPOCH, "eval_every": 2 * EPOCH, "checkpoint_every": EPOCH}
    )
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
# EXPECTED: measured once (Intel Xeon VM; RESULTS.md). Another CPU's rounding moves a trained
# generator's FID by up to ~15%, its IS by a few per cent
EXPECTED = {
    "fid": (13.3, 2.0),
    "inception_score": (1.69, 0.1),
    "min_class_fraction": (">=", 0.015),
}
# QUICK: measured once (Intel Xeon VM), scored by the quick (200-step) classifier; a young model,
# which another CPU's rounding moves a lot: ~30%, as the GANs'
QUICK = {
    "overrides": QUICK_DIFFUSION,
    "expected": {"fid": (66.7, 20.0), "inception_score": (1.24, 0.35)},
}
REQUIRES = {"task.classifier_workdir": "cifar10_cnn"}  # its features score the samples
