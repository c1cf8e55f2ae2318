"""Experiment configs: load `get_config()` from a Python file, apply `--config.a.b=v` overrides.

Overrides may only name keys that the experiment's config already has, or options of its model,
and each value must parse as that key's type; both are checked before anything runs.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import ml_collections

from gen_jax import models, tasks
from gen_jax.atomic import write_text_atomically
from gen_jax.errors import GenJaxError
from gen_jax.recipes import (  # noqa: F401 (the recipes' first home: still importable from here)
    QUICK_DIFFUSION,
    QUICK_GAN,
    QUICK_VAE,
    base_config,
    diffusion_config,
    flow_config,
    gan_config,
    r1_dcgan_config,
    vae_config,
)

OVERRIDE_PREFIX = "--config."
TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    tuple: "a tuple, e.g. (1, 2)",
    list: "a list, e.g. [1, 2]",
}


def load_module(path: str | Path) -> ModuleType:
    """Import an experiment file as a module (its config and what it declares)."""
    path = Path(path)
    if not path.is_file():
        raise GenJaxError(
            f"experiment file {path} does not exist; pass e.g. experiments/mnist_cnn.py"
        )
    spec = importlib.util.spec_from_file_location(f"gen_jax_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_experiment(path: str | Path) -> ml_collections.ConfigDict:
    """Import an experiment file and return its `get_config()`."""
    return experiment_config(load_module(path), path)


def experiment_config(module: ModuleType, path: str | Path) -> ml_collections.ConfigDict:
    """The `get_config()` of an imported experiment file (`path` names it in errors)."""
    if not hasattr(module, "get_config"):
        raise GenJaxError(f"{path} defines no get_config(); an experiment file must define one")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise GenJaxError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
    """Apply `--config.a.b=value` strings in place, rejecting unknown keys and mistyped values.

    A new `model.name` applies first, wherever it stands: it decides which model options exist.
    A `train.num_steps` override counts the run in steps: it turns `train.num_epochs` off.
    """
    pairs = []
    for override in overrides:
        if not override.startswith(OVERRIDE_PREFIX) or "=" not in override:
            raise GenJaxError(
                f"cannot read {override!r}: overrides look like --config.train.num_steps=100"
            )
        pairs.append(override[len(OVERRIDE_PREFIX) :].split("=", 1))
    for dotted, raw in sorted(pairs, key=lambda pair: pair[0] != "model.name"):  # stable
        _add_model_option(config, dotted)
        parent, leaf = _lookup_parent(config, dotted)
        old = parent[leaf]
        parent[leaf] = _parse_like(old, raw, dotted)
    overridden = {dotted for dotted, _ in pairs}
    if "train.num_steps" in overridden and "train.num_epochs" not in overridden:
        config.train.num_epochs = 0.0  # steps given on the command line: count in steps


def _add_model_option(config: ml_collections.ConfigDict, dotted: str) -> None:
    """Any option of the configured model may be overridden (`--config.model.hidden=64`), not
    only those the experiment sets: a missing one enters the section at its default value."""
    section, _, key = dotted.partition(".")
    if section != "model" or not key or key in config.model:
        return
    name = config.model.name
    choices = models.options(name)
    if key not in choices:
        raise GenJaxError(
            f"unknown config key '{dotted}': model '{name}' has no option '{key}'; "
            f"allowed: {', '.join(sorted(choices))}"
        )
    config.model[key] = choices[key]


def _lookup_parent(config: ml_collections.ConfigDict, dotted: str):
    node, keys = config, dotted.split(".")
    for depth, key in enumerate(keys):
        if not isinstance(node, ml_collections.ConfigDict) or key not in node:
            where = ".".join(keys[:depth]) or "the config"
            allowed = (
                ", ".join(sorted(node.keys()))
                if isinstance(node, ml_collections.ConfigDict)
                else "none"
            )
            raise GenJaxError(
                f"unknown config key '{dotted}': {where} has no '{key}'; allowed: {allowed}"
            )
        if depth == len(keys) - 1:
            if isinstance(node[key], ml_collections.ConfigDict):
                raise GenJaxError(
                    f"'{dotted}' is a section, not a value; set one of its keys instead"
                )
            return node, key
        node = node[key]
    raise AssertionError("unreachable")


def _parse_like(old, raw: str, dotted: str):
    """Parse `raw` to the type of the current value `old`."""
    expected = type(old)
    try:
        if isinstance(old, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if isinstance(old, (int, float)):
            value = ast.literal_eval(raw)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError
            if isinstance(old, int) and not isinstance(value, int):
                raise ValueError
            return expected(value)
        if isinstance(old, str):
            return raw
        if isinstance(old, (tuple, list)):
            value = ast.literal_eval(raw)
            if not isinstance(value, (tuple, list)):
                raise ValueError
            return expected(value)
    except (ValueError, SyntaxError):
        raise GenJaxError(
            f"config key '{dotted}' expects {TYPE_NAMES[expected]} (current value {old!r}); "
            f"got {raw!r}"
        ) from None
    raise GenJaxError(
        f"config key '{dotted}' holds a {expected.__name__}, which cannot be overridden"
    )


PATH_KEYS = (
    "data.data_dir",
    "data.folder",
    "data.cache_dir",
    "task.classifier_workdir",
)  # may be relative to where a run starts


def with_absolute_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy whose non-empty path settings are absolute, so that the saved config of a run
    still points at the same places when it is loaded from another directory."""
    config = config.copy_and_resolve_references()
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        if config[section].get(key):
            config[section][key] = str(Path(config[section][key]).resolve())
    return config


def resolve_epochs(train: ml_collections.ConfigDict, examples: int, batch_size: int) -> str:
    """Set `train.num_steps` from `train.num_epochs` where that is on (> 0): an epoch is the
    whole batches in the training split (`examples // batch_size`, as the Flax examples count
    them), the steps are rounded up. Returns what it did, to say; "" where it is off."""
    if train.num_epochs <= 0:
        return ""
    per_epoch = examples // batch_size
    train.num_steps = math.ceil(train.num_epochs * per_epoch)
    return (
        f"train.num_epochs={train.num_epochs:g}: {train.num_steps} steps ({per_epoch} an epoch: "
        f"{examples} training examples // batch {batch_size})"
    )


def save(config: ml_collections.ConfigDict, path: Path) -> None:
    """Write the resolved config as JSON (the record of what a run was), whole or not at all."""
    write_text_atomically(path, json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def load(path: Path, absolute: bool = False) -> ml_collections.ConfigDict:
    """Read a config written by `save` (lists come back as tuples, as experiments write them);
    `absolute`: its paths resolved as a run's config has them (`with_absolute_paths`), to
    compare it with another."""
    if not path.is_file():
        raise GenJaxError(f"{path} not found: is {path.parent} a gen-jax workdir?")
    saved = _tuples(read_json(path))
    # keys added since the run was written get the defaults of its family's recipe
    defaults = tasks.family(saved["task"]["name"]).recipe().to_dict()
    for section in ("data", "train", "task", "optimizer", "mesh"):  # mesh: none before FSDP
        saved[section] = _with_defaults(saved.get(section, {}), defaults[section])
    config = ml_collections.ConfigDict(saved)
    return with_absolute_paths(config) if absolute else config


def read_json(path: Path) -> dict:
    """A workdir's JSON record (`config.json`, `dataset.json`); one that cannot be parsed is a
    clear error naming it (a file that gen_jax wrote is whole, so it was changed by hand)."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GenJaxError(
            f"{path} is not valid JSON ({error}). gen_jax writes it whole or not at all, so it "
            "was edited or damaged by something else: restore it from a backup or a copy of "
            "the run, or fix the text, then run the command again."
        ) from None


def changes(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict) -> dict[str, list]:
    """{"section.key": [old value, new value]} for every setting that differs (None: absent)."""
    flat_old, flat_new = _flatten(old.to_dict()), _flatten(new.to_dict())
    return {
        key: [flat_old.get(key), flat_new.get(key)]
        for key in sorted(flat_old.keys() | flat_new.keys())
        if flat_old.get(key) != flat_new.get(key)
    }


def _flatten(node: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _with_defaults(saved: dict, defaults: dict) -> dict:
    """`saved` with the keys it lacks taken from `defaults`, in nested sections too."""
    merged = defaults | saved
    for key, value in saved.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            merged[key] = _with_defaults(value, defaults[key])
    return merged


def _tuples(node):
    if isinstance(node, dict):
        return {k: _tuples(v) for k, v in node.items()}
    if isinstance(node, list):
        return tuple(_tuples(v) for v in node)
    return node
