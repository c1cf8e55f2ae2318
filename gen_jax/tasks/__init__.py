"""Tasks by name: `build(config)` returns the task that `config.task.name` names."""

from __future__ import annotations

import ml_collections

from gen_jax.errors import GenJaxError
from gen_jax.tasks.base import Task
from gen_jax.tasks.classifier import ClassifierTask
from gen_jax.tasks.gan import GANTask
from gen_jax.tasks.vae import VAETask

REGISTRY = {"classifier": ClassifierTask, "vae": VAETask, "gan": GANTask}


def build(config: ml_collections.ConfigDict) -> Task:
    """Instantiate the task (model, optimizer, objective) that the config describes."""
    name = config.task.name
    if name not in REGISTRY:
        raise GenJaxError(
            f"unknown task '{name}'; config.task.name must be one of {sorted(REGISTRY)}"
        )
    return REGISTRY[name](config)
