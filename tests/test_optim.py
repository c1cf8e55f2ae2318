"""Learning-rate schedules built from a config's optimizer section."""

import math

import ml_collections
import pytest

from gen_jax import optim
from gen_jax.errors import GenJaxError


def schedule(num_steps=100, **settings):
    config = {
        "learning_rate": 2.0,
        "warmup_steps": 0,
        "decay_fraction": 1.0,
        "schedule": "constant",
    }
    return optim.learning_rate_schedule(ml_collections.ConfigDict(config | settings), num_steps)


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


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"schedule": "linear", "decay_fraction": 0.0}, "use a fraction in"),
        ({"schedule": "cosine", "decay_fraction": 1.5}, "use a fraction in"),
        ({"schedule": "step"}, "unknown optimizer.schedule"),
        (
            {"warmup_steps": 100},
            "warmup_steps 100 must be at least 0 and below train.num_steps 100",
        ),
        ({"warmup_steps": -1}, "warmup_steps -1 must be at least 0"),
    ],
)
def test_bad_schedule_settings_are_refused(settings, message):
    with pytest.raises(GenJaxError, match=message):
        schedule(**settings)
