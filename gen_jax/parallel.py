"""One device mesh for every run: a `data` axis over all devices of all processes.

Batches are sharded along `data`; train state is replicated. The same code runs on one CPU, on
fake host devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`), on a GPU, a TPU slice,
or several hosts joined by `jax.distributed`.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gen_jax.errors import GenJaxError

DATA_AXIS = "data"


# A gloo (CPU) collective that fails has lost its connection to another process: they move
# nothing but data between processes, and a program error would have stopped the compilation.
GLOO_FAILURE = re.compile(r"Gloo [\w -]+ failed: ")


def initialize_distributed(
    coordinator_address: str, num_processes: int, process_id: int, heartbeat_timeout: int = 100
) -> None:
    """Join a multi-process run (CPU processes talk over gloo collectives).

    A process that sends no heartbeat for `heartbeat_timeout` seconds (frozen, cut off) is
    declared dead and every process ends; one that exits closes its connections, which the
    others notice at their next collective.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=heartbeat_timeout,
    )


def lost_peer(error: Exception) -> str | None:
    """The first line of `error` if it is a collective failing because another process of the
    run is gone, else None. Its type varies (a JaxRuntimeError from a step, a ValueError from
    the gloo all-gather of orbax's barriers), its message does not."""
    message = str(error).strip().split("\n")[0]
    return message if GLOO_FAILURE.search(message) else None


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis `data`, with compiler-chosen layouts."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (train state, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """The batch axis (the leading one unless given) is split across the `data` axis."""
    return NamedSharding(mesh, PartitionSpec(*[None] * batch_axis, DATA_AXIS))


def check_batch_sizes(sizes: dict[str, int], mesh: Mesh) -> None:
    """Global batches (config key -> size) must split evenly over the devices, and so over the
    processes; one error names every size that does not."""
    devices = mesh.devices.size
    bad = {key: size for key, size in sizes.items() if size <= 0 or size % devices}
    if bad:
        named = ", ".join(f"{key}={size}" for key, size in bad.items())
        multiples = {key: max(devices, size - size % devices) for key, size in bad.items()}
        fixes = ", ".join(f"{key}={size}" for key, size in multiples.items())
        raise GenJaxError(
            f"{named}: a batch must be a positive multiple of the {devices} devices of this run "
            f"({jax.process_count()} process(es)), which share it equally; choose e.g. {fixes}"
        )


def global_batch(
    local_batch: dict[str, np.ndarray], mesh: Mesh, batch_axis: int = 0
) -> dict[str, jax.Array]:
    """Assemble the global, `data`-sharded batch from each process's local rows."""
    sharding = data_sharded(mesh, batch_axis)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Abstract arrays (shape, dtype) carrying the replicated sharding, for restoring."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
