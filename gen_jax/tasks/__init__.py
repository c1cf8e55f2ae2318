"""Tasks by name: `build(config)` returns the task that `config.task.name` names."""

from __future__ import annotations

import ml_collections

from gen_jax import models, sample_quality
from gen_jax.data import DataSpec
from gen_jax.errors import GenJaxError
from gen_jax.tasks.base import Task
from gen_jax.tasks.classifier import ClassifierTask
from gen_jax.tasks.diffusion import DiffusionTask
from gen_jax.tasks.gan import GANTask
from gen_jax.tasks.vae import VAETask

REGISTRY = {
    "classifier": ClassifierTask,
    "vae": VAETask,
    "gan": GANTask,
    "diffusion": DiffusionTask,
}


def build(config: ml_collections.ConfigDict) -> Task:
    """Instantiate the task (model, optimizer, objective) that the config describes."""
    name = config.task.name
    if name not in REGISTRY:
        raise GenJaxError(
            f"unknown task '{name}'; config.task.name must be one of {sorted(REGISTRY)}"
        )
    task_class = REGISTRY[name]
    if getattr(task_class, "scored", False):  # its samples are scored: hand it the scorer
        return task_class(config, sample_quality.scorer(config))
    return task_class(config)


LABELLED = {
    "classifier": "a classifier",
    "gan": "a class-conditional GAN (model.num_classes > 0)",
    "diffusion": "a class-conditional diffusion model (model.num_classes > 0)",
}


def fit_to_data(config: ml_collections.ConfigDict, spec: DataSpec) -> None:
    """Give the model the data's image shape (and a classifier its number of classes) where the
    experiment leaves them unset, so one experiment file fits any dataset; refuse settings that
    contradict the data, and a task that needs labels on unlabelled data."""
    model, name = config.model, config.task.name
    conditional = name in ("gan", "diffusion") and model.get("num_classes", 0) > 0
    needs_labels = name == "classifier" or conditional
    if needs_labels and not spec.labelled:
        raise GenJaxError(
            f"{LABELLED[name]} needs labelled data, but the training split has no labels (an "
            "image folder is labelled when its images sit in one sub-folder per class)"
        )
    height, width, channels = spec.image_shape
    given = {"image_shape": tuple(spec.image_shape)}
    if name == "classifier":
        given["num_classes"] = spec.num_classes
    options = models.options(model.name)
    if "image_size" in options:  # a square generator: its size and channels
        if height != width:
            raise GenJaxError(
                f"model '{model.name}' makes square images; the data are {height}x{width}: set "
                "data.image_size to resize and centre-crop them to a square"
            )
        given |= {"image_size": height, "channels": channels}
    for key, value in given.items():
        if key not in options:
            continue
        current = model.get(key)
        if current is None:
            model[key] = value
        elif (tuple(current) if isinstance(value, tuple) else current) != value:
            raise GenJaxError(
                f"config.model.{key} is {model[key]!r} but the data give {value!r}; remove the "
                f"setting (the data set it) or change data.image_size / data.channels"
            )
