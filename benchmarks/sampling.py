"""Sampling speed of the diffusion family: images/s of each sampler at a number of network
evaluations (NFE), for one U-Net config, in this process.

    python benchmarks/sampling.py [--experiment FILE] [--nfe 10 50] [--batch 250] [--repeats 2]

The network is the experiment's (default: `gen_jax.config.diffusion_config()`'s U-Net on 28x28x1)
at its initial weights: the cost of a sample does not depend on what the weights are. Each row
compiles the whole sampler (one loop) once, untimed, then times `--repeats` batches and reports
the median; the seconds per 1,000 images follow.
"""

from __future__ import annotations

import argparse
import functools
import statistics

import jax
import numpy as np
from common import experiment, timings  # this folder; run as a script

from gen_jax import config as config_lib
from gen_jax import tasks
from gen_jax.tasks import samplers
from gen_jax.tasks.base import init_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", help="an experiment file (default: diffusion_config())")
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--samplers", nargs="+", default=["ddim", "euler", "heun"])
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    config = experiment(args.experiment) if args.experiment else config_lib.diffusion_config()
    if "image_shape" not in config.model:  # an experiment leaves it to the data
        config.model.image_shape = (28, 28, 1)
    config.task.classifier_workdir = ""  # only the sampler is timed
    task = tasks.build(config)
    shape = tuple(config.model.image_shape)
    noise = np.random.default_rng(0).normal(size=(args.batch, *shape)).astype(np.float32)
    labels = np.arange(args.batch) % task.num_classes if task.num_classes else None
    state = init_state(task, jax.random.PRNGKey(0), {"image": noise[:1]})
    size = sum(x.size for x in jax.tree.leaves(state.params))
    print(f"U-Net {shape}, {size:,} parameters, batch {args.batch}, {jax.devices()[0].device_kind}")
    print("| sampler | NFE | images/s | s / 1,000 images | first call (compile) s |")
    print("|---|---|---|---|---|")
    for nfe in args.nfe:
        for sampler in args.samplers:
            steps = samplers.steps_for(sampler, nfe)
            made = task.evaluations(steps, sampler)
            run = jax.jit(lambda p, z, y, s=sampler, n=steps: task.generate(p, z, y, n, s))
            call = functools.partial(run, state.ema, noise, labels)
            first, *seconds = timings(call, repeats=1 + args.repeats)  # first: compiling too
            rate = args.batch / statistics.median(seconds)
            print(f"| {sampler} | {made} | {rate:.1f} | {1000 / rate:.1f} | {first:.1f} |")


if __name__ == "__main__":
    main()
