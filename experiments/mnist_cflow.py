"""Class-conditional flow matching on MNIST with classifier-free guidance (Ho & Salimans, 2022):
experiments/mnist_flow.py's recipe with the label embedded beside the time, replaced by "no
label" for 10% of the training images, so that one network is both the conditional and the
unconditional model; sampled by Euler's method in 16 steps. Evaluation samples cycle through the
classes, so the class histogram should be flat; `notebooks/diffusion_sampling.ipynb` shows its
guidance scales side by side.

    gen-jax train experiments/mnist_cnn.py --workdir runs/mnist_cnn    # the feature space
    gen-jax train experiments/mnist_cflow.py --workdir runs/mnist_cflow

Reproduces: not yet measured.
"""

from gen_jax.config import QUICK_DIFFUSION, flow_config


def get_config():
    config = flow_config()
    config.model.num_classes = 10
    config.task.label_dropout = 0.1
    config.task.sampler = "euler"
    config.task.sample_steps = 16
    config.task.eval_steps = 8
    config.task.classifier_workdir = "runs/mnist_cnn"
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
EXPECTED = {"fid_over_floor": ("<=", 2.0), "min_class_fraction": (">=", 0.08)}  # a goal
# QUICK: measured once (Intel Xeon VM), scored by the quick (300-step) classifier; a young model,
# which another CPU's rounding moves a lot: ~30%, as the GANs'
QUICK = {
    "overrides": QUICK_DIFFUSION,
    "expected": {"fid": (27.3, 8.2), "inception_score": (3.12, 1.0)},
}
REQUIRES = {"task.classifier_workdir": "mnist_cnn"}  # its features score the samples
