"""The train state that the single-network families share (`tasks.base.TrainState`): its update
is the optimizer's, and checkpoints written with the per-family state classes that came before
it restore into it, leaf for leaf."""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gen_jax import workdir as workdir_lib
from gen_jax.checkpoint import Checkpointer
from gen_jax.tasks.base import TrainState, ema_update
from tests.helpers.runs import assert_trees_equal, copied_run

OLD_LAYOUTS = {  # the state classes of each family before the shared one (5441f76), in order
    "classifier": ("step", "params", "batch_stats", "opt_state", "rng"),
    "vae": ("step", "params", "opt_state", "rng"),
    "diffusion": ("step", "params", "opt_state", "ema", "rng"),
}


def old_state_class(fields: tuple[str, ...]) -> type:
    return flax.struct.dataclass(
        type("OldState", (), {"__annotations__": dict.fromkeys(fields, Any)})
    )


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(OLD_LAYOUTS))
def test_a_checkpoint_of_the_state_class_before_the_shared_one_restores(
    family, tiny_run, tmp_path, mock_mnist
):
    workdir = copied_run(tiny_run(family), tmp_path / "run")
    _, _, _, state = workdir_lib.load_state(workdir)
    fields = OLD_LAYOUTS[family]
    assert {field.name for field in dataclasses.fields(state)} == set(fields)
    host = jax.tree.map(np.asarray, state)
    old = old_state_class(fields)(**{name: getattr(host, name) for name in fields})
    shutil.rmtree(workdir / "checkpoints")  # the run's one checkpoint, written anew the old way
    writer = Checkpointer(workdir / "checkpoints", max_to_keep=1)
    writer.save(int(host.step), old, iter(grain.MapDataset.range(4).to_iter_dataset()))
    writer.close()
    _, _, _, restored = workdir_lib.load_state(workdir)
    assert type(restored) is type(state)
    assert_trees_equal(restored, host)


def test_apply_gradients_is_the_optimizers_update_and_ema_update_moves_the_average():
    params = {"w": jnp.array([1.0, -2.0])}
    optimizer = optax.adam(0.1)
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), jax.random.key(0))
    grads = {"w": jnp.array([0.5, 0.25])}
    new = state.apply_gradients(grads, optimizer)
    updates, opt_state = optimizer.update(grads, optimizer.init(params), params)
    assert int(new.step) == 1
    assert_trees_equal(new.params, optax.apply_updates(params, updates))
    assert_trees_equal(new.opt_state, opt_state)
    # step 0: the decay is min(0.99, 1/10), so the average moves 90% of the way; rtol 1e-6 is
    # ~16 float32 ulps, room for the rounding of 1 - 0.1 and one multiply-add on any CPU
    moved = ema_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, 0.99, jnp.zeros((), jnp.int32))
    np.testing.assert_allclose(moved["w"], 0.9, rtol=1e-6)
