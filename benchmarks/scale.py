"""Ahead-of-time sizing of the paper-scale recipes: each one's train step lowered and compiled
(never run) for 1, 8 and 64 fake CPU devices, data parallel (mesh.fsdp=1) and FSDP (mesh.fsdp =
the device count), with XLA's per-device memory, FLOPs per step and the bytes of each kind of
collective per device. Prints a Markdown table.

    python benchmarks/scale.py                       # every recipe, 1 / 8 / 64 devices
    python benchmarks/scale.py --recipes cifar10_dit_s2 --devices 1 8

It starts itself again with `--xla_force_host_platform_device_count` set to the largest count,
and builds smaller meshes from the first devices. XLA:CPU's memory analysis is an estimate of
what an accelerator would hold (the buffers of one device's program: arguments, outputs,
temporaries); a GPU's or TPU's compiler fuses and schedules differently, so read it as a size,
not a measurement.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

RECIPES = ["cifar10_ddpm_ho2020", "cifar10_cfm_tong2023", "cifar10_dit_s2"]
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f64": 8, "pred": 1, "s8": 1}
# one collective instruction of the optimised HLO: `%name = f32[..] all-gather(...)`, or a tuple
# of shapes `(f32[..], /*index=5*/f32[..])` for several arrays at once
INSTRUCTION = re.compile(r"=\s*(.*?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")
COMMENT = re.compile(r"/\*.*?\*/")


def collective_bytes(hlo: str) -> dict[str, int]:
    """Bytes each kind of collective produces on one device per step, from the optimised HLO
    (an all-gather's gathered parameter, a reduce-scatter's or all-reduce's gradient)."""
    sent = dict.fromkeys(COLLECTIVES, 0)
    for line in hlo.splitlines():
        match = INSTRUCTION.search(COMMENT.sub("", line))
        if not match or "-done" in line:
            continue
        for dtype, dims in SHAPE.findall(match.group(1)):
            size = 1
            for dim in filter(None, dims.split(",")):
                size *= int(dim)
            sent[match.group(2)] += size * DTYPE_BYTES.get(dtype, 4)
    return sent


def sized(recipe: str, devices: int, fsdp: bool) -> dict:
    """The recipe's train step compiled for a mesh of the first `devices` devices."""
    import jax
    import numpy as np
    from common import experiment

    from gen_jax import compiled, data, parallel, tasks

    config = experiment(recipe, [f"--config.mesh.fsdp={devices if fsdp else 1}"])
    tasks.fit_to_data(config, data.DataSpec((32, 32, 3), tuple("0123456789"), True))
    task = tasks.build(config)
    mesh = parallel.make_mesh(config.mesh, jax.devices()[:devices])
    size = config.data.batch_size
    batch = {
        "image": jax.ShapeDtypeStruct((size, 32, 32, 3), np.float32),
        "label": jax.ShapeDtypeStruct((size,), np.int32),
    }
    parts = compiled.run_parts(task, config, mesh, batch)
    batch = parallel.placed(batch, parallel.data_sharded(mesh))
    layout = parallel.shardings_of(parts.state)
    calls = compiled.TrainCalls(task, config, mesh, layout, on_device=False)
    start = time.perf_counter()
    step = calls.jitted[False].lower(parts.state, batch, {}).compile()
    seconds = time.perf_counter() - start
    memory = step.memory_analysis()
    cost = step.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(parts.state.params))
    state_bytes = sum(
        int(np.prod(shard)) * leaf.dtype.itemsize
        for leaf in jax.tree.leaves(parts.state)
        for shard in [leaf.sharding.shard_shape(leaf.shape)]
    )
    return {
        "params": params,
        "state": state_bytes,  # the train state one device holds (params, Adam, EMA)
        "arguments": memory.argument_size_in_bytes,
        "temporary": memory.temp_size_in_bytes,
        "peak": memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes,
        "flops": cost.get("flops", float("nan")),
        "collectives": collective_bytes(step.as_text()),
        "compile_seconds": seconds,
    }


def main(args: argparse.Namespace) -> None:
    from gen_jax.provenance import hardware

    mib = lambda b: f"{b / 2**20:,.0f}"
    print(f"Train steps compiled, not run; {hardware()}; per device, one step\n")
    print(
        "| recipe | params | devices | layout | state MiB | peak MiB | temp MiB | GFLOP | "
        "all-gather MiB | reduce-scatter MiB | all-reduce MiB | compile s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for recipe in args.recipes:
        for devices in args.devices:
            for fsdp in (False, True) if devices > 1 else (False,):
                row = sized(recipe, devices, fsdp)
                sent = row["collectives"]
                layout = f"fsdp 1x{devices}" if fsdp else f"data {devices}x1"
                print(
                    f"| {recipe} | {row['params'] / 1e6:.2f}M | {devices} | {layout} | "
                    f"{mib(row['state'])} | {mib(row['peak'])} | {mib(row['temporary'])} | "
                    f"{row['flops'] / 1e9:,.0f} | {mib(sent['all-gather'])} | "
                    f"{mib(sent['reduce-scatter'])} | {mib(sent['all-reduce'])} | "
                    f"{row['compile_seconds']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--devices", nargs="+", type=int, default=[1, 8, 64])
    arguments = parser.parse_args()
    flag = f"--xla_force_host_platform_device_count={max(arguments.devices)}"
    if flag not in os.environ.get("XLA_FLAGS", ""):  # the devices exist from the start only
        env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()}
        env["JAX_PLATFORMS"] = "cpu"
        sys.exit(subprocess.call([sys.executable, *sys.argv], env=env))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(arguments)
