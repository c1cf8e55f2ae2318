"""Train tiny models a few steps on several device meshes in one process of 8 fake CPU devices,
and save what each mesh gave: `python -m tests.helpers.mesh_layouts OUT.npz FAMILY...`.

Every mesh trains the same global batches (seeded), through the run's own compiled train step
(`compiled.TrainCalls`) with the state laid out by `mesh.*`, so the only differences are the
layout and the order of float32 reductions. The state is saved gathered to the host, with the
shape of the first device's shard of each leaf (what FSDP must cut by the size of its axis).
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from gen_jax import compiled, data, parallel, tasks
from gen_jax.tasks.base import init_state
from tests.helpers.experiments import tiny_config

STEPS = 4
MESHES = {  # name -> (devices, mesh.data, mesh.fsdp)
    "one_device": (1, 1, 1),
    "data_8x1": (8, 8, 1),
    "fsdp_1x8": (8, 1, 8),
    "fsdp_2x4": (8, 2, 4),
}


def batches(family: str, count: int, size: int = 16) -> list[dict[str, np.ndarray]]:
    """`count` global batches of MNIST-shaped random images (in the family's input range) and
    labels, the same on every call."""
    rng = np.random.default_rng(0)
    low = 0.0 if family in ("classifier", "vae") else -1.0
    return [
        {
            "image": rng.uniform(low, 1.0, (size, 28, 28, 1)).astype(np.float32),
            "label": rng.integers(0, 10, size).astype(np.int32),
        }
        for _ in range(count)
    ]


def train(family: str, mesh_name: str, initial=None) -> tuple[dict[str, np.ndarray], object]:
    """Losses, final state leaves (`state/NAME`) and first-shard shapes (`shard/NAME`), and the
    initial state, which a later call may take as its `initial` (laid out on its own mesh),
    instead of compiling the initialisation again."""
    devices, data_size, fsdp = MESHES[mesh_name]
    config = tiny_config(family)
    config.mesh.data, config.mesh.fsdp = data_size, fsdp
    config.mesh.fsdp_min_size = 64  # the tiny models' kernels are sharded too
    tasks.fit_to_data(config, data.DataSpec((28, 28, 1), tuple("0123456789"), True))
    task = tasks.build(config)
    mesh = parallel.make_mesh(config.mesh, jax.devices()[:devices])
    inputs = batches(family, STEPS)
    parts = compiled.run_parts(task, config, mesh, parallel.global_batch(inputs[0], mesh))
    layout = parallel.shardings_of(parts.state)
    if initial is None:
        rng = jax.random.PRNGKey(config.seed)
        initial = init_state(task, rng, parts.batch, out_shardings=layout)
    state = jax.device_put(jax.device_get(initial), layout)  # new buffers: steps donate them
    calls = compiled.TrainCalls(task, config, mesh, layout, on_device=False)
    losses = []
    for batch in inputs:
        state, metrics = calls(False, state, parallel.global_batch(batch, mesh), {})
        losses.append(float(metrics["loss"][0]))
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    saved = {"losses": np.array(losses)}
    for path, leaf in leaves:
        name = parallel.leaf_name(path)
        saved[f"state/{name}"] = np.asarray(jax.device_get(leaf))
        saved[f"shard/{name}"] = np.array(leaf.addressable_shards[0].data.shape)
    return saved, initial


def main(out: str, families: list[str]) -> None:
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    results = {}
    for family in families:
        initial = None  # made on the first mesh (one device), laid out on each
        for mesh_name in MESHES:
            saved, initial = train(family, mesh_name, initial)
            results |= {f"{family}|{mesh_name}|{key}": value for key, value in saved.items()}
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
