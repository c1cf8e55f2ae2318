"""Experiment configs: load `get_config()` from a Python file, apply `--config.a.b=v` overrides.

Overrides may only name keys that the experiment's config already has, or options of its model,
and each value must parse as that key's type; both are checked before anything runs.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import ml_collections

from gen_jax import models
from gen_jax.atomic import write_text_atomically
from gen_jax.errors import GenJaxError

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
    # keys added since the run was written get the defaults of its task family
    families = {"vae": vae_config, "gan": gan_config, "diffusion": diffusion_config}
    family = families.get(saved["task"]["name"], base_config)
    defaults = family().to_dict()
    for section in ("data", "train", "task", "optimizer"):
        saved[section] = _with_defaults(saved[section], defaults[section])
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


def base_config() -> ml_collections.ConfigDict:
    """Every key the training path reads, with defaults; experiments start from this."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = ml_collections.ConfigDict(
        {
            "name": "classifier",
            "label_smoothing": 0.0,
            "max_shift": 0,  # random shifts of up to this many pixels
            "test_flips": False,  # evaluate each image and its mirror image (horizontal flip)
            "test_shift": 0,  # and, if > 0, its two diagonal translations by this many pixels
        }
    )
    config.model = ml_collections.ConfigDict({"name": "cnn"})
    config.data = ml_collections.ConfigDict(
        {
            "name": "mnist",  # a TFDS dataset prepared as array_record
            "data_dir": "",  # its directory; empty: $TFDS_DATA_DIR
            "folder": "",  # an image folder root/<split>/[<class>/]*.{png,jpg,jpeg} instead
            "image_size": 0,  # >0: resize the shorter side, then centre-crop to this square
            "channels": 0,  # >0: convert every image to 1 (gray) or 3 (color) channels
            "skip_unreadable": False,  # train without a folder's unreadable images (logged)
            "cache_dir": "",  # a folder's decoded cache; empty: ~/.cache/gen_jax
            "train_split": "train",
            "eval_split": "test",
            # 0: all; >0 keeps N of each split (quick runs): TFDS's first N, a folder's
            # class-stratified random N (the same every run)
            "max_examples": 0,
            "batch_size": 128,
            "eval_batch_size": 1000,
            "preprocess": ("scale_to_unit",),  # named steps, gen_jax/data/preprocess.py
            "mean": (),  # per channel, in [0, 1] units: the "normalize" step's
            "std": (),
            "crop_padding": 4,  # the "random_crop" step's padding, in pixels a side ...
            "crop_mode": "zeros",  # ... of zeros, or "reflect": the image's pixels mirrored
            # a training split of more decoded bytes (or any, with `streaming`) is read from
            # disk by index through grain's `workers` processes instead of held in memory
            "memory_budget": 2 * 2**30,
            "streaming": False,
            "workers": 2,
            # the training split in device memory, batches gathered in the compiled step (the
            # same batches as on the host); False for a dataset larger than device memory
            "on_device": True,
        }
    )
    config.optimizer = ml_collections.ConfigDict(
        {
            "name": "sgd",
            "learning_rate": 0.1,
            "momentum": 0.9,  # sgd
            "nesterov": False,  # sgd
            "b1": 0.9,  # adam, adamw
            "b2": 0.999,
            "weight_decay": 0.0,  # adamw: decoupled; sgd: L2, added to the gradient
            "bias_lr_scale": 1.0,  # batch norm biases: this multiple of the rate (decay / it)
            "lookahead_every": 0,  # steps between lookahead's syncs (optim.lookahead); 0: off
            "lookahead_decay": 0.95**5,  # the slow weights' final decay per sync (airbench's)
            "freeze": "",  # a parameter name (last key): trained for the first freeze_at steps
            "freeze_at": 0,  # only, then held (airbench's whitening bias: 3 epochs)
            "schedule": "constant",  # or "cosine", "linear": decay to end_fraction at the end
            "warmup_steps": 0,
            "warmup_from": 0.0,  # the warm-up starts at this fraction of the peak rate
            "end_fraction": 0.0,  # cosine and linear decay to this fraction of the peak rate
            "decay_fraction": 1.0,  # the decay spans this last fraction of the steps after warm-up
        }
    )
    config.train = ml_collections.ConfigDict(
        {
            "num_steps": 1000,
            "log_every": 100,  # each of these three: 0 for only at the end
            "eval_every": 0,
            "checkpoint_every": 1000,
            "keep_checkpoints": 3,
            # Speed only (benchmarks/README.md); both give the same numbers up to float rounding.
            "batch_splits": 1,  # gradients of this many slices of each batch, run concurrently
            "steps_per_call": 1,  # train steps per compiled call (a lax.scan over the batches)
        }
    )
    return config


def vae_config() -> ml_collections.ConfigDict:
    """`base_config()` set up for a VAE on dynamically binarised MNIST (conv, 32-d latent)."""
    config = base_config()
    config.task = ml_collections.ConfigDict(
        {
            "name": "vae",
            "likelihood": "bernoulli",  # or "logistic": 256-level discretized logistic, unbinarised
            "objective": "elbo",  # or "iwae": the importance-weighted bound
            "train_samples": 1,  # k of the IWAE objective
            "beta": 1.0,  # weight of the KL term (beta-VAE); applies to the "elbo" objective
            "kl_warmup_steps": 0,  # beta ramps linearly from 0 over these steps
            "eval_samples": 100,  # importance samples for the NLL of periodic evaluations
            "final_eval_samples": 1000,  # ... and of the final one (the reported number)
            "eval_sample_chunk": 50,  # decoded at once (memory: chunk x eval batch), same NLL
            "eval_seed": 0,  # fixes the test binarisation and the evaluation samples
            "classifier_workdir": "",  # a finished classifier run: prior samples' FID, IS, P/R
            "prior_samples": 10_000,  # prior samples scored (decoder means; <= eval split size)
            "inception_samples": 0,  # > 0: the final evaluation's Inception-v3 FID, KID, P/R
            "inception_reference": 0,  # train images of its reference statistics (0: all)
            "neighbours": 3,  # k of the k-NN manifolds of precision and recall
        }
    )
    config.model = ml_collections.ConfigDict({"name": "conv_vae", "latent_dim": 32, "hidden": 256})
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.data.eval_batch_size = 200
    return config


def gan_config() -> ml_collections.ConfigDict:
    """`base_config()` set up for a DCGAN on MNIST in [-1, 1]: non-saturating loss, Adam
    (2e-4, b1 0.5) for each player, an EMA generator."""
    config = base_config()
    config.task = ml_collections.ConfigDict(
        {
            "name": "gan",
            "loss": "non_saturating",  # or "hinge", "wasserstein"
            "critic_steps": 1,  # discriminator updates per generator update
            "gradient_penalty": 0.0,  # weight of the WGAN-GP penalty (> 0 for "wasserstein")
            "r1_penalty": 0.0,  # weight of the R1 penalty, mean |grad_x D(real)|^2
            "ema_decay": 0.999,
            "classifier_workdir": "",  # a finished classifier run: FID, IS, precision, recall
            "inception_samples": 0,  # > 0: the final evaluation's Inception-v3 FID, KID, P/R
            "inception_reference": 0,  # train images of its reference statistics (0: all)
            "eval_samples": 10_000,  # generated images per evaluation (<= eval split size)
            "neighbours": 3,  # k of the k-NN manifolds of precision and recall
            "eval_seed": 0,  # fixes the evaluation noise and the picture noise
        }
    )
    config.model = ml_collections.ConfigDict({"name": "dcgan", "noise_dim": 64, "num_classes": 0})
    config.data.preprocess = ("scale_to_symmetric",)
    config.data.eval_batch_size = 500
    adam = config.optimizer.to_dict() | {"name": "adam", "learning_rate": 2e-4, "b1": 0.5}
    config.optimizer = ml_collections.ConfigDict(
        {"generator": dict(adam), "discriminator": dict(adam)}
    )
    return config


def r1_dcgan_config(epoch: int) -> ml_collections.ConfigDict:
    """`gan_config()` with the R1 recipe of experiments/mnist_dcgan.py: a discriminator without
    normalisation (R1 is per example) that downsamples by space_to_depth, R1 weight 1, batch 64,
    Adam 5e-4 for each player decayed linearly to zero over the last 40% of training; evaluation
    and checkpoint periods count in `epoch` steps, which the experiment sets."""
    config = gan_config()
    config.model.discriminator_norm = "none"
    config.model.downsampling = "space_to_depth"  # R1 differentiates D twice: 1.75x faster
    config.task.r1_penalty = 1.0
    config.data.batch_size = 64
    for player in ("generator", "discriminator"):
        config.optimizer[player].learning_rate = 5e-4
        config.optimizer[player].schedule = "linear"
        config.optimizer[player].decay_fraction = 0.4
    config.train.eval_every = 2 * epoch
    config.train.checkpoint_every = 2 * epoch
    return config


def diffusion_config() -> ml_collections.ConfigDict:
    """`base_config()` set up for diffusion on MNIST in [-1, 1]: a DDPM (cosine schedule, noise
    prediction) with a U-Net sized for a CPU (16, 32, 32 features at 28, 14, 7 pixels: 0.45M
    parameters), batch 64, Adam 1e-3 with warm-up and cosine decay, an EMA, DDIM sampling; 6
    epochs, evaluated every 2."""
    config = base_config()
    config.task = ml_collections.ConfigDict(
        {
            "name": "diffusion",
            "objective": "ddpm",  # or "flow": rectified flow / conditional flow matching
            "schedule": "cosine",  # ddpm's noise schedule, or "linear"
            "prediction": "epsilon",  # ddpm: or "v"; flow: "velocity"
            "time_distribution": "uniform",  # of training times; or "logit_normal"
            "label_dropout": 0.1,  # class-conditional: labels replaced by "no label" (guidance)
            "ema_decay": 0.999,
            "sampler": "ddim",  # or "ddpm", "euler", "heun" (gen_jax/tasks/samplers.py)
            "sample_steps": 50,  # of samples and the final evaluation
            "eta": 0.0,  # ddim's noise: 0 deterministic
            "guidance_scale": 1.0,  # classifier-free guidance; 1: the conditional model alone
            "clip_denoised": True,  # clip the x_0 estimate to [-1, 1] at every step
            "classifier_workdir": "",  # a finished classifier run: FID, IS, precision, recall
            "inception_samples": 0,  # > 0: the final evaluation's Inception-v3 FID, KID, P/R
            "inception_reference": 0,  # train images of its reference statistics (0: all)
            "eval_samples": 1_000,  # images scored (and test loss images) by periodic evals ...
            "eval_steps": 20,  # ... drawn in this many steps
            "final_eval_samples": 10_000,  # ... and by the final one (<= eval split size)
            "neighbours": 3,  # k of the k-NN manifolds of precision and recall
            "eval_seed": 0,  # fixes the evaluation noise and the picture noise
        }
    )
    config.model = ml_collections.ConfigDict(
        {"name": "unet", "features": 16, "channel_multipliers": (1, 2, 2), "blocks_per_level": 2}
    )
    config.data.preprocess = ("scale_to_symmetric",)
    config.data.batch_size = 64
    config.data.eval_batch_size = 500
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 200
    epoch = 60_000 // config.data.batch_size
    config.train.update(
        {"num_steps": 6 * epoch, "eval_every": 2 * epoch, "checkpoint_every": epoch // 2}
    )
    return config


def flow_config() -> ml_collections.ConfigDict:
    """`diffusion_config()` for flow matching: rectified flow (the straight Gaussian path), the
    network regressing the velocity noise - image; sampled by Heun's method in 10 steps (19
    network evaluations), 5 (9) in periodic evaluations."""
    config = diffusion_config()
    config.task.update(
        {
            "objective": "flow",
            "prediction": "velocity",
            "sampler": "heun",
            "sample_steps": 10,
            "eval_steps": 5,
        }
    )
    return config


# Overrides shared by the QUICK runs of `gen-jax reproduce --quick` (gen_jax/reproduce.py).
QUICK_VAE = [  # 200 steps; 10 importance samples, so the final evaluation takes seconds
    "--config.train.num_steps=200",
    "--config.task.inception_samples=0",  # the papers' Inception scores: full runs only
    "--config.task.eval_samples=10",
    "--config.task.final_eval_samples=10",
    "--config.task.eval_sample_chunk=10",
]
QUICK_GAN = [
    "--config.train.num_steps=300",
    "--config.task.eval_samples=2000",
    "--config.task.inception_samples=0",
]
QUICK_DIFFUSION = [  # 250 steps of 32 images; 500 samples scored in the final evaluation
    "--config.train.num_steps=250",
    "--config.data.batch_size=32",
    "--config.task.inception_samples=0",
    "--config.task.final_eval_samples=500",
]
