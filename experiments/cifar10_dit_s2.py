"""A DiT-S/2 (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023) trained by
flow matching on CIFAR-10, class-conditional with classifier-free guidance: hidden size 384,
12 blocks, 6 heads, patches of 2 pixels (256 tokens of a 32x32 image, as DiT-S/2 has of a
256-pixel image's 32x32x4 latent), adaLN-Zero; as the paper trains it: batch 256, AdamW 1e-4
constant, no weight decay, EMA 0.9999, random flips, 400k steps. The same size as
the paper's network: 32,475,660 parameters here (3 channels in and out, 11 class rows), against
32,865,056 for the paper's setting (4 latent channels, 8 outputs with the learned variance,
1,001 class rows): the paper's "33M" (tests/test_scale.py counts both).

A recipe for accelerators, not for a CPU. The paper reports ImageNet 256 numbers only (DiT-S/2:
FID 68.4 at 400k steps without guidance, 50,000 samples against ImageNet's training set); no
published CIFAR-10 FID goes with it. The final evaluation here scores 10,000 samples in the
Inception-v3 against the 50,000 training images.

    gen-jax train experiments/cifar10_dit_s2.py --workdir runs/dit_cifar10 --config.mesh.fsdp=8

Not measured here; `benchmarks/scale.py` sizes its step.
"""

import ml_collections

from gen_jax.recipes import paper_cifar10_config


def get_config():
    config = paper_cifar10_config()
    config.model = ml_collections.ConfigDict(
        {
            "name": "dit",
            "image_shape": (32, 32, 3),
            "patch_size": 2,
            "features": 384,
            "depth": 12,
            "heads": 6,
            "num_classes": 10,
        }
    )
    config.task.update(
        {
            "objective": "flow",
            "prediction": "velocity",
            "sampler": "heun",
            "sample_steps": 50,
            "eval_steps": 10,
            "guidance_scale": 1.5,
        }
    )
    config.optimizer.update(
        {"name": "adamw", "learning_rate": 1e-4, "warmup_steps": 0, "clip_norm": 0.0}
    )
    config.data.batch_size = 256
    config.train.num_steps = 400_000
    return config


NOT_REPRODUCED = (  # gen-jax reproduce leaves it out (gen_jax/reproduce.py)
    "a paper-scale recipe for accelerators, days of training on a CPU; train it with gen-jax train"
)
