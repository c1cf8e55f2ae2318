"""Learning-rate schedules built from a config's optimizer section."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from gen_jax import config as config_lib
from gen_jax import optim
from gen_jax.errors import GenJaxError


def optimizer_config(**settings) -> ml_collections.ConfigDict:
    config = config_lib.base_config().optimizer
    config.update({"learning_rate": 2.0, **settings})
    return config


def schedule(num_steps=100, **settings):
    return optim.learning_rate_schedule(optimizer_config(**settings), num_steps)


def rates(fn, steps):
    return [float(fn(step)) for step in steps]


def test_warm_up_then_constant():
    # optax schedules in float32: rates of 0-2 to ~1e-7 (pytest.approx: 1e-6 relative); an
    # off-by-one warm-up is off by 0.2 of the peak
    assert rates(schedule(warmup_steps=10), (0, 5, 10, 99)) == pytest.approx([0, 1, 2, 2])
    assert rates(schedule(), (0, 99)) == [2, 2]


def test_linear_decay_over_the_last_steps_holds_the_peak_before():
    fn = schedule(schedule="linear", warmup_steps=10, decay_fraction=40 / 90)
    got = rates(fn, (5, 10, 59, 60, 70, 80, 100))
    assert got == pytest.approx([1, 2, 2, 2, 1.5, 1, 0])


def test_cosine_decay_spans_every_step_after_warm_up_by_default():
    fn = schedule(schedule="cosine", warmup_steps=20)
    half = 2.0 * 0.5 * (1 + math.cos(math.pi * 0.5))
    # float32 cosine: ~1e-7 from the float64 value; absolute, as the last rate is 0
    assert rates(fn, (10, 20, 60, 100)) == pytest.approx([1, 2, half, 0], abs=1e-6)


def test_a_warm_up_may_start_above_zero_and_a_decay_end_above_zero():
    fn = schedule(schedule="linear", warmup_steps=10, warmup_from=0.2, end_fraction=0.1)
    assert rates(fn, (0, 5, 10, 55, 100)) == pytest.approx([0.4, 1.2, 2, 1.1, 0.2])
    cosine = schedule(schedule="cosine", end_fraction=0.25)
    assert rates(cosine, (0, 100)) == pytest.approx([2, 0.5])


def test_batch_norm_biases_take_a_scaled_rate_and_the_same_decay_per_step():
    settings = {"name": "sgd", "momentum": 0.0, "weight_decay": 0.1, "bias_lr_scale": 8.0}
    optimizer = optim.build(optimizer_config(learning_rate=0.5, **settings), 10)
    params = {
        "Group_0": {"BatchNorm_0": {"bias": jnp.ones(2)}, "Conv_0": {"kernel": jnp.ones(2)}},
        "Dense_0": {"bias": jnp.ones(2)},  # not a batch norm's
    }
    zero = jax.tree.map(jnp.zeros_like, params)
    decay, _ = optimizer.update(zero, optimizer.init(params), params)
    # the same decay per step for all: 8 * 0.5 * (0.1 / 8) = 0.5 * 0.1
    np.testing.assert_allclose(np.concatenate(jax.tree.leaves(decay)), -0.05)
    ones = jax.tree.map(jnp.ones_like, params)
    step, _ = optimizer.update(ones, optimizer.init(params), zero)
    np.testing.assert_allclose(step["Group_0"]["BatchNorm_0"]["bias"], -4.0)
    np.testing.assert_allclose(step["Group_0"]["Conv_0"]["kernel"], -0.5)
    np.testing.assert_allclose(step["Dense_0"]["bias"], -0.5)


def test_lookahead_pulls_the_weights_to_the_slow_ones_every_k_steps_and_ends_on_them():
    settings = {"momentum": 0.0, "lookahead_every": 2, "lookahead_decay": 0.5}
    optimizer = optim.build(optimizer_config(learning_rate=1.0, **settings), 5)
    params, grads = jnp.zeros(()), -jnp.ones(())  # plain SGD alone: +1 a step
    state, seen = optimizer.init(params), []
    for _ in range(5):
        updates, state = optimizer.update(grads, state, params)
        params = params + updates
        seen.append(float(params))
    # step 2: slow = 0 + (1 - 0.5 * (2/5)^3) * (2 - 0); step 4: 1.936 + 0.744 * (3.936 - 1.936);
    # step 5, the last: the slow weights
    # float32: a few roundings of values near 3, each 1 ulp (~2.4e-7 relative) on any CPU
    np.testing.assert_allclose(seen, [1.0, 1.936, 2.936, 3.424, 3.424], rtol=1e-6)


def test_gradients_are_clipped_to_the_global_norm_before_the_optimizer():
    optimizer = optim.build(optimizer_config(learning_rate=1.0, momentum=0.0, clip_norm=1.0), 5)
    params = {"a": jnp.zeros(3), "b": jnp.zeros(())}
    large = {"a": jnp.array([3.0, 0.0, 4.0]), "b": jnp.array(12.0)}  # global norm 13
    updates, _ = optimizer.update(large, optimizer.init(params), params)
    # float32: a norm and a division, a few ulps (~1e-7) on any CPU; no clipping would be 13x off
    np.testing.assert_allclose(updates["a"], [-3 / 13, 0, -4 / 13], rtol=1e-6)  # SGD: -grad
    small = {"a": jnp.array([0.3, 0.0, 0.4]), "b": jnp.array(0.0)}  # norm 0.5: unchanged
    updates, _ = optimizer.update(small, optimizer.init(params), params)
    np.testing.assert_allclose(updates["a"], [-0.3, 0, -0.4], rtol=1e-6)


def test_a_frozen_parameter_trains_for_its_steps_then_holds_while_the_others_go_on():
    settings = {"momentum": 0.9, "weight_decay": 0.1, "freeze": "whitening_bias", "freeze_at": 3}
    optimizer = optim.build(optimizer_config(learning_rate=0.5, **settings), 10)
    params = {"whitening_bias": jnp.ones(2), "Conv_0": {"kernel": jnp.ones(2)}}
    state, seen = optimizer.init(params), []
    for _ in range(6):
        grads = jax.tree.map(jnp.ones_like, params)
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        seen.append((float(params["whitening_bias"][0]), float(params["Conv_0"]["kernel"][0])))
    frozen, other = zip(*seen, strict=True)
    # the same updates for both while it trains (momentum, decay); then it holds, with its
    # momentum, while the other goes on
    assert frozen[:3] == other[:3]
    assert frozen[2] == frozen[3] == frozen[5] and other[2] > other[3] > other[5]
    with pytest.raises(GenJaxError, match="no parameter of that name"):
        optimizer = optim.build(optimizer_config(freeze="whitening", freeze_at=3), 10)
        optimizer.init(params)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"lookahead_every": -1}, "use a number of steps"),
        ({"lookahead_every": 5, "lookahead_decay": 1.0}, r"a decay in \[0, 1\)"),
        ({"schedule": "linear", "decay_fraction": 0.0}, "use a fraction in"),
        ({"schedule": "cosine", "decay_fraction": 1.5}, "use a fraction in"),
        ({"schedule": "step"}, "unknown optimizer.schedule"),
        ({"warmup_from": 1.5}, "optimizer.warmup_from is 1.5; use a fraction of the peak"),
        (
            {"warmup_steps": 100},
            "warmup_steps 100 must be at least 0 and below train.num_steps 100",
        ),
        ({"warmup_steps": -1}, "warmup_steps -1 must be at least 0"),
        ({"freeze": "whitening_bias"}, "freeze_at is 0; use the number of steps that train"),
        ({"clip_norm": -1.0}, "optimizer.clip_norm is -1.0; use a norm > 0, or 0: off"),
    ],
)
def test_bad_schedule_settings_are_refused(settings, message):
    with pytest.raises(GenJaxError, match=message):
        optim.build(optimizer_config(**settings), 100)
