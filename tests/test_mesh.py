"""The device mesh of `config.mesh`: its shape, the FSDP rules that lay the train state out over
it, and training that gives the same numbers on every layout."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from gen_jax import parallel, recipes, tasks
from gen_jax.errors import GenJaxError
from tests.helpers.distributed import FIRST_RTOL, TRAJECTORY_RTOL, relative_difference
from tests.helpers.mesh_layouts import MESHES
from tests.helpers.runs import REPO


def mesh_config(**settings) -> ml_collections.ConfigDict:
    config = recipes.base_config().mesh
    config.update(settings)
    return config


@pytest.mark.parametrize(
    "data, fsdp, devices, shape",
    [
        (-1, 1, 8, (8, 1)),
        (-1, 8, 8, (1, 8)),
        (2, -1, 8, (2, 4)),
        (2, 4, 8, (2, 4)),
        (-1, 1, 1, (1, 1)),
    ],
)
def test_mesh_axes_fill_the_devices(data, fsdp, devices, shape):
    assert parallel.mesh_shape(mesh_config(data=data, fsdp=fsdp), devices) == shape


@pytest.mark.parametrize(
    "data, fsdp, devices, message",
    [
        (-1, 3, 8, "must multiply to the 8 devices"),
        (4, 4, 8, "must multiply to the 8 devices"),
        (-1, -1, 8, "one of them at most"),
        (0, 8, 8, "a positive size"),
    ],
)
def test_a_mesh_that_does_not_fit_the_devices_is_refused_naming_its_keys(
    data, fsdp, devices, message
):
    with pytest.raises(GenJaxError, match=message) as error:
        parallel.mesh_shape(mesh_config(data=data, fsdp=fsdp), devices)
    assert f"mesh.data={data}, mesh.fsdp={fsdp}" in str(error.value)


@pytest.mark.parametrize(
    "shape, ways, spec",
    [
        ((3, 3, 64, 128), 8, PartitionSpec(None, None, None, "fsdp")),  # the largest dimension
        ((3, 3, 128, 128), 8, PartitionSpec(None, None, None, "fsdp")),  # the last of equals
        ((100, 6), 8, PartitionSpec()),  # no dimension that 8 divides
        ((24, 100), 8, PartitionSpec("fsdp", None)),  # the largest that 8 divides
        ((16,), 8, PartitionSpec()),  # under the minimum size
        ((3, 3, 64, 128), 1, PartitionSpec()),  # an axis of one device: replicated
    ],
)
def test_fsdp_splits_a_large_leaf_along_its_largest_divisible_dimension(shape, ways, spec):
    assert parallel.fsdp_spec(shape, ways, min_size=100) == spec


class Abstract:
    """A leaf's shape, as `jax.eval_shape` gives it."""

    def __init__(self, *shape):
        self.shape = shape


STATE = {  # named like a train state's leaves
    "params": {"Conv_0": {"kernel": Abstract(3, 3, 8, 64), "bias": Abstract(64)}},
    "ema": {"Conv_0": {"kernel": Abstract(3, 3, 8, 64), "bias": Abstract(64)}},
}


def specs(rules, fsdp: int = 2) -> dict[str, PartitionSpec]:
    """The layout of STATE by `rules` on a (1, fsdp) mesh (abstract: no devices needed)."""
    config = mesh_config(fsdp=fsdp, rules=rules, fsdp_min_size=100)
    mesh = jax.sharding.AbstractMesh((1, fsdp), parallel.BATCH_AXES)
    sharding = parallel.state_sharding(STATE, mesh, config)
    flat = jax.tree_util.tree_flatten_with_path(sharding)[0]
    return {parallel.leaf_name(path): s.spec for path, s in flat}


def test_the_first_rule_that_matches_a_leaf_decides_its_layout():
    laid_out = specs(((r"^ema/", "replicated"), (".*", "fsdp")))
    assert laid_out["params/Conv_0/kernel"] == PartitionSpec(None, None, None, "fsdp")
    assert laid_out["ema/Conv_0/kernel"] == PartitionSpec()
    assert laid_out["params/Conv_0/bias"] == PartitionSpec()  # 64 values: under the minimum


@pytest.mark.parametrize(
    "rules, message",
    [
        ((("^optimizer/", "fsdp"), (".*", "fsdp")), r"\['\^optimizer/'\] decide no leaf"),
        (((".*", "fsdp"), ("^ema/", "replicated")), r"\['\^ema/'\] decide no leaf"),  # shadowed
        (((".*", "sharded"),), "is not a rule"),
        ((("(ema", "fsdp"),), "is not a regular expression"),
    ],
)
def test_a_rule_that_matches_nothing_or_names_no_layout_is_refused(rules, message):
    with pytest.raises(GenJaxError, match=f"mesh.rules: .*{message}"):
        specs(rules)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, np.ndarray]:
    """Each of FAMILIES trained 4 steps on one device, data parallel (8x1) and FSDP (1x8, 2x4),
    in one process of 8 fake CPU devices (tests/helpers/mesh_layouts.py)."""
    out = tmp_path_factory.mktemp("mesh") / "layouts.npz"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    command = [sys.executable, "-m", "tests.helpers.mesh_layouts", str(out), *FAMILIES]
    subprocess.run(command, env=env, cwd=REPO, check=True, timeout=600, capture_output=True)
    return dict(np.load(out))


# batch norm, dropout and Adam; a VAE's dense layers (the GAN's and the diffusion U-Net's steps
# take 5-10 s a mesh to compile; their EMA leaves are laid out by the same rules)
FAMILIES = ["classifier", "vae"]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mesh_name", [name for name in MESHES if name != "one_device"])
def test_fsdp_and_data_parallel_train_what_one_device_trains(layouts, family, mesh_name):
    reference, other = f"{family}|one_device|", f"{family}|{mesh_name}|"
    # As tests/test_distributed.py's 1-vs-8 comparison: the same global batch, reductions in
    # another order (over 8 partials, or over a gathered parameter), so a few ulps a step; a
    # layout that dropped a shard or summed a gradient twice would move the loss by far more.
    # FIRST_RTOL (2e-5) holds 4 steps here as it holds the first 3 there: 4 steps barely
    # amplify rounding (measured: the classifier's losses 2.6e-7 from one device's, AMD EPYC
    # Zen 4; the three 8-device layouts equal to each other)
    losses = layouts[reference + "losses"]
    np.testing.assert_allclose(layouts[other + "losses"], losses, rtol=FIRST_RTOL)
    leaves = [
        key.removeprefix(reference) for key in layouts if key.startswith(reference + "state/")
    ]
    differences = {
        leaf: relative_difference(layouts[reference + leaf], layouts[other + leaf])
        for leaf in leaves
    }
    too_far = {leaf: d for leaf, d in differences.items() if not d <= TRAJECTORY_RTOL[family]}
    assert not too_far, too_far


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_each_device_holds_its_share_of_every_sharded_leaf(layouts, family, mesh_name):
    prefix, ways = f"{family}|{mesh_name}|", MESHES[mesh_name][2]
    split = 0
    for key in [k for k in layouts if k.startswith(prefix + "shard/")]:
        full = layouts[prefix + "state/" + key.removeprefix(prefix + "shard/")].shape
        shard = tuple(layouts[key])
        if np.prod(full) >= 64 and any(size % ways == 0 for size in full):
            # the helper's fsdp_min_size: every leaf of 64 values or more that `ways` divides
            assert np.prod(shard) * ways == np.prod(full), (key, full, shard)
            split += ways > 1
        else:
            assert shard == full, (key, full, shard)
    assert split > 0 or ways == 1


@pytest.mark.parametrize("name", ["cifar10_ddpm_ho2020", "cifar10_dit_s2"])
def test_the_paper_scale_models_are_sharded_by_the_default_rules(name):
    """With mesh.fsdp=8, all but a sliver of the state (norm scales, biases) is split 8 ways."""
    from tests.test_scale import recipe

    config = recipe(name, "--config.mesh.fsdp=8")
    task = tasks.build(config)
    batch = {"image": jnp.zeros((8, 32, 32, 3)), "label": jnp.zeros((8,), jnp.int32)}
    state = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)
    mesh = jax.sharding.AbstractMesh((1, 8), parallel.BATCH_AXES)
    sharding = parallel.state_sharding(state, mesh, config.mesh)
    total = split = 0
    for leaf, leaf_sharding in zip(jax.tree.leaves(state), jax.tree.leaves(sharding), strict=True):
        size = int(np.prod(leaf.shape))
        total += size
        split += size * ("fsdp" in leaf_sharding.spec)
    assert split / total > 0.99
