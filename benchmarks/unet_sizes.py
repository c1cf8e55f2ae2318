"""What a U-Net size costs on this machine: training examples/s (the diffusion task's compiled
train step), the step's GFLOP (XLA's cost analysis) and GFLOP/s, and sampling time per image and
network evaluation, for a few U-Nets on 28x28x1, in this process.

    python benchmarks/unet_sizes.py [--batch 128] [--steps 8]

Each row compiles the step once, untimed, then times `--steps` steps; sampling times 250 images
through 5 Euler steps after one untimed call. The weights are initial: a step's cost does not
depend on them. Use it to size `diffusion_config()`'s U-Net for a CPU.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from common import timings  # this folder; run as a script

from gen_jax import config as config_lib
from gen_jax import tasks
from gen_jax.tasks.base import init_state

SIZES = [  # (features, channel_multipliers, blocks_per_level)
    (32, (1, 2, 2), 2),
    (32, (1, 2, 2), 1),
    (24, (1, 2, 2), 2),
    (16, (1, 2, 2), 2),
]


def measure(features: int, multipliers: tuple[int, ...], blocks: int, batch: int, steps: int):
    """(parameters, train examples/s, GFLOP per step, sampling ms per image and NFE)."""
    config = config_lib.diffusion_config()
    config.model.update(
        {
            "image_shape": (28, 28, 1),
            "features": features,
            "channel_multipliers": multipliers,
            "blocks_per_level": blocks,
        }
    )
    task = tasks.build(config)
    images = np.random.default_rng(0).uniform(-1, 1, (batch, 28, 28, 1)).astype(np.float32)
    state = init_state(task, jax.random.PRNGKey(0), {"image": images[:1]})
    parameters = sum(leaf.size for leaf in jax.tree.leaves(state.params))
    batch_ = {"image": jax.numpy.asarray(images)}
    step = jax.jit(task.train_step).lower(state, batch_).compile()
    cost = step.cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost).get("flops", 0.0)

    def train():  # one step, the state carried on
        nonlocal state
        state, metrics = step(state, batch_)
        return metrics

    (seconds,) = timings(train, repeats=steps, warmup=1, back_to_back=True)
    noise = np.random.default_rng(1).normal(size=(250, 28, 28, 1)).astype(np.float32)
    sample = jax.jit(lambda params, z: task.generate(params, z, None, 5, "euler"))
    (per_call,) = timings(lambda: sample(state.ema, noise), warmup=1)
    per_image = per_call / (250 * 5)
    return parameters, batch / seconds, flops / 1e9, flops / seconds / 1e9, 1000 * per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    print(f"U-Nets on 28x28x1, batch {args.batch}, {jax.devices()[0].device_kind}")
    print(
        "| features, multipliers, blocks | parameters | train examples/s | GFLOP / step | "
        "GFLOP/s | sampling ms / image / NFE |"
    )
    print("|---|---|---|---|---|---|")
    for features, multipliers, blocks in SIZES:
        size, rate, gflop, gflops, ms = measure(
            features, multipliers, blocks, args.batch, args.steps
        )
        print(
            f"| {features}, {multipliers}, {blocks} | {size / 1e6:.2f}M | {rate:.0f} | "
            f"{gflop:.1f} | {gflops:.1f} | {ms:.2f} |"
        )


if __name__ == "__main__":
    main()
