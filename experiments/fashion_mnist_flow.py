"""Flow matching on Fashion-MNIST: experiments/mnist_flow.py's recipe (`flow_config`: rectified
flow, the 0.45M-parameter U-Net, batch 64, Adam 1e-3 with warm-up and cosine decay, EMA 0.999, 6
epochs; Heun in 10 steps, 19 network evaluations) on the clothes; scored in the features of the
Fashion-MNIST classifier, beside experiments/fashion_mnist_dcgan.py.

    gen-jax train experiments/fashion_mnist_cnn.py --workdir runs/fashion_mnist_cnn  # features
    gen-jax train experiments/fashion_mnist_flow.py --workdir runs/fashion_mnist_flow

Measured: RESULTS.md, section 'Diffusion and flow matching (MNIST, ...)' (`fashion_mnist_flow`).

Its final evaluation also scores 10k samples in the FID Inception-v3's features against the
train split's (`inception_*` metrics, docs/inception.md): not yet measured for this recipe.
"""

from gen_jax.recipes import QUICK_DIFFUSION, flow_config


def get_config():
    config = flow_config()
    config.data.name = "fashion_mnist"
    config.task.classifier_workdir = "runs/fashion_mnist_cnn"
    config.task.inception_samples = 10_000  # + the papers' Inception-v3 scores (docs/inception.md)
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
# EXPECTED: measured once (Intel Xeon VM; RESULTS.md). Another CPU's rounding moves a trained
# generator's FID by up to ~15%, its IS by a few per cent
EXPECTED = {
    "fid": (3.01, 0.45),
    "inception_score": (3.55, 0.1),
    "min_class_fraction": (">=", 0.05),
}
# QUICK: measured once (Intel Xeon VM), scored by the quick (300-step) classifier; a young model,
# which another CPU's rounding moves a lot: ~30%, as the GANs'
QUICK = {
    "overrides": QUICK_DIFFUSION,
    "expected": {"fid": (37.4, 11.2), "inception_score": (1.55, 0.45)},
}
REQUIRES = {"task.classifier_workdir": "fashion_mnist_cnn"}  # its features score the samples
