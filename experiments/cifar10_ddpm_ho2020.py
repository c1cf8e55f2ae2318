"""DDPM on CIFAR-10 as Ho, Jain & Abbeel trained it ("Denoising Diffusion Probabilistic Models",
2020; their released code, diffusion_tf): the U-Net of 128 features, multipliers 1-2-2-2, 2
residual blocks a level, self-attention at 16x16 and in the middle, dropout 0.1, a stride-2
convolution down and nearest-neighbour doubling and a convolution up (35,746,307 parameters,
the paper's 35.7M); the linear noise schedule (betas 1e-4 to 0.02 over 1,000 steps, here its
continuous-time limit), epsilon prediction and the simple loss; batch 128, Adam 2e-4 with 5,000
warm-up steps, gradients clipped to norm 1, EMA 0.9999, random horizontal flips; 800k steps;
ancestral sampling in 1,000 steps.

A recipe for accelerators, not for a CPU: the paper trained it in 10.6 hours on a TPU v3-8
(800k steps at batch 128: ~2,700 images a second). Its published FID is 3.17 (Inception score
9.46), from 50,000 samples against the 50,000 training images (TF Inception-v3). This file's
final evaluation scores 10,000 samples (the test split's size, gen_jax's cap) against the
training images: an FID from 10k samples is biased upwards against one from 50k (the bias falls
as 1/N: Chong & Forsyth, 2020), so set it beside numbers of the same protocol.

    gen-jax train experiments/cifar10_ddpm_ho2020.py --workdir runs/ddpm_cifar10 \\
        --config.mesh.fsdp=8        # e.g. on 8 accelerators, parameters sharded (FSDP)

Not measured here (no accelerator and no dataset host); `benchmarks/scale.py` sizes its step.
"""

from gen_jax.recipes import paper_cifar10_config


def get_config():
    config = paper_cifar10_config()
    config.task.update(
        {"objective": "ddpm", "schedule": "linear", "prediction": "epsilon", "sampler": "ddpm"}
    )
    config.task.update({"sample_steps": 1_000, "eval_steps": 100})
    config.train.num_steps = 800_000
    return config


NOT_REPRODUCED = (  # gen-jax reproduce leaves it out (gen_jax/reproduce.py)
    "a paper-scale recipe for accelerators, days of training on a CPU; train it with gen-jax train"
)
