"""Optax optimizers and learning-rate schedules built from a config's `optimizer` section."""

from __future__ import annotations

import ml_collections
import optax

from gen_jax.errors import GenJaxError

SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("sgd", "adam", "adamw")


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warm-up over `warmup_steps`, then the peak rate; "cosine" and "linear" decay it to
    zero at `num_steps` over the last `decay_fraction` of the steps after the warm-up."""
    if config.schedule not in SCHEDULES:
        raise GenJaxError(f"unknown optimizer.schedule '{config.schedule}'; use one of {SCHEDULES}")
    if not 0 < config.decay_fraction <= 1:
        raise GenJaxError(
            f"optimizer.decay_fraction is {config.decay_fraction}; use a fraction in (0, 1] of "
            "the steps after the warm-up (1: decay over all of them)"
        )
    peak, warmup = config.learning_rate, config.warmup_steps
    if warmup < 0 or (warmup and warmup >= num_steps):
        raise GenJaxError(
            f"optimizer.warmup_steps {warmup} must be at least 0 and below train.num_steps "
            f"{num_steps}: the run would end before its learning rate reached the peak; shorten "
            "the warm-up for a short run"
        )
    decay = max(round(config.decay_fraction * (num_steps - warmup)), 1)
    pieces = {0: optax.linear_schedule(0.0, peak, warmup)} if warmup else {}
    if config.schedule == "constant" or warmup + decay < num_steps:
        pieces[warmup] = optax.constant_schedule(peak)
    if config.schedule == "cosine":
        pieces[num_steps - decay] = optax.cosine_decay_schedule(peak, decay)
    elif config.schedule == "linear":
        pieces[num_steps - decay] = optax.linear_schedule(peak, 0.0, decay)
    starts = sorted(pieces)  # each piece runs from its start to the next one's
    return optax.join_schedules([pieces[start] for start in starts], starts[1:])


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
