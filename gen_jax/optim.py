"""Optax optimizers and learning-rate schedules built from a config's `optimizer` section."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gen_jax.errors import GenJaxError

SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("sgd", "adam", "adamw")


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warm-up over `warmup_steps` from `warmup_from` x the peak, then the peak rate;
    "cosine" and "linear" decay it to `end_fraction` x the peak at `num_steps`, over the last
    `decay_fraction` of the steps after the warm-up."""
    if config.schedule not in SCHEDULES:
        raise GenJaxError(f"unknown optimizer.schedule '{config.schedule}'; use one of {SCHEDULES}")
    if not 0 < config.decay_fraction <= 1:
        raise GenJaxError(
            f"optimizer.decay_fraction is {config.decay_fraction}; use a fraction in (0, 1] of "
            "the steps after the warm-up (1: decay over all of them)"
        )
    for key in ("warmup_from", "end_fraction"):
        if not 0 <= config[key] <= 1:
            raise GenJaxError(f"optimizer.{key} is {config[key]}; use a fraction of the peak rate")
    peak, warmup = config.learning_rate, config.warmup_steps
    if warmup < 0 or (warmup and warmup >= num_steps):
        raise GenJaxError(
            f"optimizer.warmup_steps {warmup} must be at least 0 and below train.num_steps "
            f"{num_steps}: the run would end before its learning rate reached the peak; shorten "
            "the warm-up for a short run"
        )
    decay = max(round(config.decay_fraction * (num_steps - warmup)), 1)
    end = config.end_fraction * peak
    pieces = {0: optax.linear_schedule(config.warmup_from * peak, peak, warmup)} if warmup else {}
    if config.schedule == "constant" or warmup + decay < num_steps:
        pieces[warmup] = optax.constant_schedule(peak)
    if config.schedule == "cosine":
        pieces[num_steps - decay] = optax.cosine_decay_schedule(peak, decay, config.end_fraction)
    elif config.schedule == "linear":
        pieces[num_steps - decay] = optax.linear_schedule(peak, end, decay)
    starts = sorted(pieces)  # each piece runs from its start to the next one's
    return optax.join_schedules([pieces[start] for start in starts], starts[1:])


def _optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule, weight_decay: float
) -> optax.GradientTransformation:
    if config.name == "sgd":
        if config.nesterov and not config.momentum:
            raise GenJaxError("optimizer.nesterov needs optimizer.momentum > 0")
        sgd = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
        if not weight_decay:
            return sgd
        return optax.chain(optax.add_decayed_weights(weight_decay), sgd)  # L2, as torch's SGD
    if config.name == "adam":
        return optax.adam(schedule, b1=config.b1, b2=config.b2)
    if config.name == "adamw":
        return optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=weight_decay)
    raise GenJaxError(f"unknown optimizer.name '{config.name}'; use one of {OPTIMIZERS}")


def parameter_groups(scaled_biases: bool, freeze: str) -> Callable[[Any], Any]:
    """A function of the parameters giving each its group (optax.partition): "bias" for a batch
    norm's bias where `scaled_biases`, "frozen" for the parameters named `freeze` (their last
    key), else "other"."""

    def label(path, _) -> str:
        names = [str(getattr(key, "key", "")) for key in path]
        if freeze and names[-1] == freeze:
            return "frozen"
        if scaled_biases and names[-1] == "bias" and any(n.startswith("BatchNorm") for n in names):
            return "bias"
        return "other"

    def labels(params) -> Any:
        groups = jax.tree_util.tree_map_with_path(label, params)
        if freeze and "frozen" not in jax.tree.leaves(groups):
            raise GenJaxError(
                f"optimizer.freeze names '{freeze}', but the model has no parameter of that "
                "name; use the last key of one of its parameters, or '' for none"
            )
        return groups

    return labels


class LookaheadState(NamedTuple):
    inner: Any  # the wrapped optimizer's state
    slow: Any  # the slow weights
    count: jax.Array  # steps taken


def lookahead(
    inner: optax.GradientTransformation, every: int, decay: float, num_steps: int
) -> optax.GradientTransformation:
    """Lookahead (Zhang et al., 2019) as airbench's: every `every` steps the slow weights move to
    decay_t * slow + (1 - decay_t) * fast and the weights are set to them, decay_t rising as
    decay * (step / num_steps)^3; at the last step the weights become the slow ones. Here rather
    than optax.lookahead, which keeps (fast, slow) pairs as the parameters and a fixed rate."""

    def init(params) -> LookaheadState:
        return LookaheadState(inner.init(params), params, jnp.zeros((), jnp.int32))

    def update(grads, state: LookaheadState, params):
        updates, inner_state = inner.update(grads, state.inner, params)
        count = state.count + 1
        due, last = count % every == 0, count == num_steps
        rate = jnp.where(due, 1 - decay * (count / num_steps) ** 3, 0.0)
        fast = optax.apply_updates(params, updates)
        slow = jax.tree.map(lambda s, f: s + (rate * (f - s)).astype(s.dtype), state.slow, fast)
        updates = jax.tree.map(
            lambda u, s, p: jnp.where(due | last, s - p, u), updates, slow, params
        )
        return updates, LookaheadState(inner_state, slow, count)

    return optax.GradientTransformation(init, update)


def build(config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """The optimizer named by `config.name` with the config's schedule; with `bias_lr_scale`,
    batch norm biases at that multiple of the rate and the weight decay divided by it, so that
    their decay per step stays the others' (airbench's); with `freeze`, that parameter's rate
    zero from step `freeze_at` on; with `clip_norm`, the gradients clipped to that global norm
    first; with `lookahead_every`, wrapped in `lookahead`."""
    schedule = learning_rate_schedule(config, num_steps)
    optimizer = _optimizer(config, schedule, config.weight_decay)
    scale = config.bias_lr_scale
    if scale <= 0:
        raise GenJaxError(f"optimizer.bias_lr_scale is {scale}; use a positive multiple")
    groups = {"other": optimizer}
    if scale != 1:
        groups["bias"] = _optimizer(
            config, lambda step: scale * schedule(step), config.weight_decay / scale
        )
    if config.freeze:
        at = config.freeze_at
        if not isinstance(at, int) or at <= 0:
            raise GenJaxError(
                f"optimizer.freeze_at is {at!r}; use the number of steps that train "
                f"'{config.freeze}' before it is held"
            )
        trained = lambda step: jnp.where(step < at, schedule(step), 0.0)
        groups["frozen"] = _optimizer(config, trained, config.weight_decay)
    if len(groups) > 1:
        optimizer = optax.partition(groups, parameter_groups(scale != 1, config.freeze))
    if config.clip_norm < 0:
        raise GenJaxError(f"optimizer.clip_norm is {config.clip_norm}; use a norm > 0, or 0: off")
    if config.clip_norm:
        optimizer = optax.chain(optax.clip_by_global_norm(config.clip_norm), optimizer)
    every, decay = config.lookahead_every, config.lookahead_decay
    if not isinstance(every, int) or every < 0 or not 0 <= decay < 1:
        raise GenJaxError(
            f"optimizer.lookahead_every {every!r} and lookahead_decay {decay!r}: use a number of "
            "steps (0: off) and a decay in [0, 1)"
        )
    return lookahead(optimizer, every, decay, num_steps) if every else optimizer
