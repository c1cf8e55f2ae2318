"""Conditional flow matching on CIFAR-10 as torchcfm trains it (Tong et al., "Improving and
Generalizing Flow-Based Generative Models with Minibatch Optimal Transport", 2023;
torchcfm's examples/images/cifar10/train_cifar10.py): I-CFM with sigma 0, the straight path
from noise to image and its velocity as the target, here gen_jax's rectified-flow objective;
its U-Net (torchcfm's UNetModelWrapper: 128 channels, multipliers 1-2-2-2, 2 residual blocks,
attention at 16 pixels and in the middle, dropout 0.1, conv resampling) has the layers of DDPM's
network, so the same 35,746,307 parameters here (torchcfm prints it as "34.09 M", the count
/ 2^20); batch 128, Adam 2e-4 with 5,000 warm-up steps, gradients clipped to norm 1, EMA 0.9999,
random flips; 400k steps.

A recipe for accelerators, not for a CPU (torchcfm trains it on one RTX 2080). torchcfm's
README gives FID 3.5 (OT-CFM; I-CFM close to it), from 50,000 samples integrated by dopri5
(adaptive, tolerance 1e-5) against the 50,000 training images (clean-fid's legacy TensorFlow
mode). Here Heun's method in 100 steps (199 network evaluations) and 10,000 samples; that FID is
biased upwards against 50k samples.

    gen-jax train experiments/cifar10_cfm_tong2023.py --workdir runs/cfm_cifar10

Not measured here (no accelerator and no dataset host); `benchmarks/scale.py` sizes its step.
"""

from gen_jax.recipes import paper_cifar10_config


def get_config():
    config = paper_cifar10_config()
    config.task.update(
        {
            "objective": "flow",
            "prediction": "velocity",
            "sampler": "heun",
            "sample_steps": 100,
            "eval_steps": 20,
        }
    )
    config.model.heads = 4  # torchcfm's num_head_channels=64: attention sees 256 channels
    config.train.num_steps = 400_000
    return config


NOT_REPRODUCED = (  # gen-jax reproduce leaves it out (gen_jax/reproduce.py)
    "a paper-scale recipe for accelerators, days of training on a CPU; train it with gen-jax train"
)
