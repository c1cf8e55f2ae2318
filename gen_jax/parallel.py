"""One device mesh for every run, with two named axes, `data` and `fsdp`, over all devices of all
processes (`config.mesh`).

Batches are split over both axes together. The train state is replicated by default
(`mesh.fsdp = 1`: data parallel); with `mesh.fsdp = N` every leaf that matches a rule of
`mesh.rules` and holds at least `mesh.fsdp_min_size` values is split N ways along its largest
dimension that N divides, as big_vision's `fsdp` sharding strategy and MaxText's
`ici_fsdp_parallelism` do. The compiler then gathers each parameter where a step uses it and
reduce-scatters its gradient. The same code runs on one CPU, on fake host devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), on a GPU, a TPU slice, or several hosts
joined by `jax.distributed`.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gen_jax.errors import GenJaxError

DATA_AXIS, FSDP_AXIS = "data", "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # a batch is split over every device
SHARDING_KINDS = ("fsdp", "replicated")  # what a rule of mesh.rules may make of a leaf


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


def mesh_shape(mesh_config: ml_collections.ConfigDict | None, devices: int) -> tuple[int, int]:
    """(data, fsdp) sizes of `mesh_config` (None: all devices on `data`) for `devices` devices;
    one of the two may be -1, "the rest". Sizes that do not multiply to the device count are an
    error naming the keys."""
    if mesh_config is None:
        return devices, 1
    sizes = {"mesh.data": mesh_config.data, "mesh.fsdp": mesh_config.fsdp}
    named = ", ".join(f"{key}={size}" for key, size in sizes.items())
    if any(size == 0 or size < -1 for size in sizes.values()) or list(sizes.values()) == [-1, -1]:
        raise GenJaxError(
            f"{named}: each mesh axis is a positive size, or -1 for the devices the other leaves "
            "(one of them at most)"
        )
    known = math.prod(size for size in sizes.values() if size != -1)
    data, fsdp = (devices // known if size == -1 else size for size in sizes.values())
    if devices % known or data * fsdp != devices:
        raise GenJaxError(
            f"{named}: the mesh axes must multiply to the {devices} devices of this run "
            f"({jax.process_count()} process(es)); set mesh.data=-1 and a mesh.fsdp that "
            f"divides {devices}"
        )
    return data, fsdp


def make_mesh(
    mesh_config: ml_collections.ConfigDict | None = None, devices: list | None = None
) -> Mesh:
    """The (data, fsdp) mesh of `mesh_config` (None: data parallel) over `devices` (default:
    every device of every process), with compiler-chosen layouts."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(
        shape, BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (train state, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """The batch axis (the leading one unless given) is split across every device (the `data`
    and `fsdp` axes together)."""
    return NamedSharding(mesh, PartitionSpec(*[None] * batch_axis, BATCH_AXES))


def leaf_name(path: tuple) -> str:
    """A pytree leaf's path as "params/Conv_0/kernel": the same for a live state, its abstract
    shapes and a checkpoint's metadata (what `mesh.rules` match and errors name)."""

    def key_name(key) -> str:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                return str(getattr(key, attribute))
        return str(key)

    return "/".join(key_name(key) for key in path)


def fsdp_spec(shape: tuple[int, ...], ways: int, min_size: int) -> PartitionSpec:
    """The leaf split `ways` ways over `fsdp` along its largest dimension that `ways` divides
    (the last of equals); replicated where it is smaller than `min_size` values or no dimension
    divides."""
    if ways == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    divisible = [axis for axis, size in enumerate(shape) if size % ways == 0]
    if not divisible:
        return PartitionSpec()
    axis = max(divisible, key=lambda a: (shape[a], a))
    return PartitionSpec(*[FSDP_AXIS if a == axis else None for a in range(len(shape))])


def state_sharding(
    abstract_state: Any, mesh: Mesh, mesh_config: ml_collections.ConfigDict | None = None
) -> Any:
    """A `NamedSharding` per leaf of the state (shapes suffice): the first rule of
    `mesh_config.rules` ((regex, "fsdp" | "replicated"), searched in the leaf's name) that
    matches decides; leaves no rule matches are replicated. A rule that decides no leaf is an
    error: a misspelt pattern would silently shard nothing."""
    ways = mesh.shape[FSDP_AXIS]
    rules = [] if mesh_config is None else [_rule(rule) for rule in mesh_config.rules]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
    names = [leaf_name(path) for path, _ in leaves]
    used = set()

    def spec(name: str, leaf) -> PartitionSpec:
        for index, (pattern, kind) in enumerate(rules):
            if pattern.search(name):
                used.add(index)
                if kind == "fsdp":
                    return fsdp_spec(tuple(leaf.shape), ways, mesh_config.fsdp_min_size)
                return PartitionSpec()
        return PartitionSpec()

    specs = [spec(name, leaf) for name, (_, leaf) in zip(names, leaves, strict=True)]
    unused = [rules[i][0].pattern for i in range(len(rules)) if i not in used]
    if unused:
        raise GenJaxError(
            f"mesh.rules: the pattern(s) {unused} decide no leaf of the train state (none "
            f"matches, or an earlier rule takes each that does); its leaves are named like "
            f"{names[:3]} (regular expressions, searched in the name)"
        )
    return jax.tree_util.tree_unflatten(treedef, [NamedSharding(mesh, s) for s in specs])


def _rule(rule: Any) -> tuple[re.Pattern, str]:
    """A rule of mesh.rules, its pattern compiled, or an error that shows the form."""
    form = (
        f"each is (regex, kind), kind one of {SHARDING_KINDS}, "
        'e.g. (("^ema/", "replicated"), (".*", "fsdp"))'
    )
    if not isinstance(rule, tuple | list) or len(rule) != 2 or rule[1] not in SHARDING_KINDS:
        raise GenJaxError(f"mesh.rules: {rule!r} is not a rule; {form}")
    try:
        return re.compile(rule[0]), rule[1]
    except (re.error, TypeError) as error:
        raise GenJaxError(
            f"mesh.rules: {rule[0]!r} is not a regular expression ({error}); {form}"
        ) from None


def check_batch_sizes(sizes: dict[str, int], mesh: Mesh) -> None:
    """Global batches (config key -> size) must split evenly over the devices (the `data` and
    `fsdp` axes, which carry it together), and so over the processes; one error names every
    size that does not."""
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


def placed(tree: Any, sharding: Any) -> Any:
    """Abstract arrays (shape, dtype) carrying `sharding` (one for all, or a tree of them), for
    compiling ahead and restoring."""
    if isinstance(sharding, NamedSharding):
        sharding = jax.tree.map(lambda _: sharding, tree)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sharding
    )


def shardings_of(tree: Any) -> Any:
    """The sharding of each leaf of a tree of arrays or abstract arrays."""
    return jax.tree.map(lambda x: x.sharding, tree)
