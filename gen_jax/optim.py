"""Optax optimizers and learning-rate schedules built from a config's `optimizer` section."""

from __future__ import annotations

import ml_collections
import optax

from gen_jax.errors import GenJaxError

SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("sgd", "adam", "adamw")


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warm-up over `warmup_steps`, then constant or cosine decay to zero at `num_steps`."""
    if config.schedule not in SCHEDULES:
        raise GenJaxError(f"unknown optimizer.schedule '{config.schedule}'; use one of {SCHEDULES}")
    peak, warmup = config.learning_rate, config.warmup_steps
    if config.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        after = optax.cosine_decay_schedule(peak, max(num_steps - warmup, 1))
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def build(config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """The optimizer named by `config.name` with the config's schedule."""
    schedule = learning_rate_schedule(config, num_steps)
    if config.name == "sgd":
        return optax.sgd(schedule, momentum=config.momentum or None)
    if config.name == "adam":
        return optax.adam(schedule, b1=config.b1, b2=config.b2)
    if config.name == "adamw":
        return optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay)
    raise GenJaxError(f"unknown optimizer.name '{config.name}'; use one of {OPTIMIZERS}")
