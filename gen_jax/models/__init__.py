"""Linen modules by name: `build(config.model)` turns a model config section into a module."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import ml_collections

from gen_jax.errors import GenJaxError
from gen_jax.models.airbench import Airbench
from gen_jax.models.cnn import CNN, BatchNormCNN
from gen_jax.models.dcgan import GANModels, dcgan
from gen_jax.models.dit import dit
from gen_jax.models.unet import unet
from gen_jax.models.vae import conv_vae, mlp_vae

DTYPES = ("float32", "bfloat16", "float16")  # a model's compute precision (`dtype`)
REGISTRY: dict[str, Callable[..., nn.Module | GANModels]] = {
    "airbench": Airbench,
    "cnn": CNN,
    "bn_cnn": BatchNormCNN,
    "conv_vae": conv_vae,
    "mlp_vae": mlp_vae,
    "dcgan": dcgan,
    "unet": unet,
    "dit": dit,
}


def register(name: str, builder: Callable[..., nn.Module | GANModels]) -> None:
    """Make `config.model.name = name` build `builder(**config.model options)`; its keyword
    arguments (with defaults) are the options that config.model may set."""
    if name in REGISTRY and REGISTRY[name] is not builder:
        raise GenJaxError(f"a model named '{name}' is already registered")
    REGISTRY[name] = builder


def options(name: str) -> dict[str, Any]:
    """The options the model `name` takes (what config.model may set), with their defaults."""
    if name not in REGISTRY:
        raise GenJaxError(
            f"unknown model '{name}'; config.model.name must be one of {sorted(REGISTRY)}"
        )
    parameters = inspect.signature(REGISTRY[name]).parameters
    return {k: p.default for k, p in parameters.items() if k not in ("parent", "name")}


def build(model_config: ml_collections.ConfigDict, **decided: Any) -> nn.Module | GANModels:
    """Instantiate the module named by `model_config.name` with the section's other keys and the
    options `decided` by the caller (a task, e.g. a VAE decoder's outputs per pixel and channel
    from the task's likelihood), which the section may repeat but not contradict."""
    kwargs = model_config.to_dict()
    name = kwargs.pop("name")
    fields = options(name)
    unknown = sorted((set(kwargs) | set(decided)) - set(fields))
    if unknown:
        raise GenJaxError(
            f"model '{name}' takes no option(s) {unknown}; "
            f"allowed in config.model: {sorted(fields)}"
        )
    for key, value in decided.items():
        if kwargs.setdefault(key, value) != value:
            raise GenJaxError(
                f"config.model.{key}={kwargs[key]!r}, but the task's settings (config.task) "
                f"make it {value!r}; leave model.{key} unset"
            )
    if kwargs.get("dtype", DTYPES[0]) not in DTYPES:
        raise GenJaxError(f"unknown model.dtype '{kwargs['dtype']}'; use one of {DTYPES}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return REGISTRY[name](**kwargs)
