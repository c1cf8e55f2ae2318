"""The model families by name, the one place that knows them.

Each family registers its task class, its default recipe (the defaults of every config key its
runs have) and what its runs can do; `Run`, `reproduce` and the scorers ask the registry, never
compare names. A new family is one `register` call (docs/adding_a_family.md):

    tasks.register("toy", tasks.Family(ToyTask, toy_config, can={"sample"}))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections

from gen_jax import models, recipes, sample_quality
from gen_jax.data import DataSpec
from gen_jax.errors import GenJaxError
from gen_jax.tasks.base import Task
from gen_jax.tasks.classifier import ClassifierTask
from gen_jax.tasks.diffusion import DiffusionTask
from gen_jax.tasks.gan import GANTask
from gen_jax.tasks.vae import VAETask

# What a family's runs may be able to do, and what each ability asks of its task
# (docs/adding_a_family.md):
ABILITIES = {
    "classify": "logits(state, x), features(state, x), features_and_logits(variables, x)",
    "sample": "latent_shape, num_classes, sampling_options, images_from(state, latents, labels, "
    "**sampling) in [0, 1]; built with the scorer of its samples: task(config, scorer)",
    "encode": "latents_of(state, images, labels, **options)",
    "trajectory": "path_from(state, noise, labels, **sampling): every x_t, in [0, 1]",
}
LABELS = ("never", "always", "conditional")  # when a family's runs need labelled data


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family: its task class, its recipe and what its runs can do.

    `labels`: "always" (a classifier: the data also give model.num_classes), "conditional"
    (when model.num_classes > 0) or "never"."""

    task: Callable[..., Task]
    recipe: Callable[[], ml_collections.ConfigDict]
    can: frozenset[str] = frozenset()
    labels: str = "never"

    def __post_init__(self):
        object.__setattr__(self, "can", frozenset(self.can))
        unknown = sorted(self.can - set(ABILITIES))
        if unknown or self.labels not in LABELS:
            raise GenJaxError(
                f"a family's abilities are some of {sorted(ABILITIES)} (not {unknown}) and its "
                f"labels one of {LABELS} (not {self.labels!r})"
            )

    def needs_labels(self, config: ml_collections.ConfigDict) -> bool:
        """Whether a run of this config trains on labels."""
        conditional = self.labels == "conditional" and config.model.get("num_classes", 0) > 0
        return self.labels == "always" or conditional


FAMILIES: dict[str, Family] = {}


def register(name: str, family: Family) -> None:
    """Make `config.task.name = name` build `family.task` (a name registered twice is refused)."""
    if name in FAMILIES and FAMILIES[name] != family:
        raise GenJaxError(f"a family named '{name}' is already registered")
    FAMILIES[name] = family


register("classifier", Family(ClassifierTask, recipes.base_config, {"classify"}, labels="always"))
register("vae", Family(VAETask, recipes.vae_config, {"sample", "encode"}))
register("gan", Family(GANTask, recipes.gan_config, {"sample"}, labels="conditional"))
register(
    "diffusion",
    Family(
        DiffusionTask,
        recipes.diffusion_config,
        {"sample", "encode", "trajectory"},
        labels="conditional",
    ),
)


def family(name: str) -> Family:
    """The family registered as `name`, or a clear error naming the registered ones."""
    if name not in FAMILIES:
        raise GenJaxError(
            f"unknown task '{name}'; config.task.name must be one of {sorted(FAMILIES)} (a new "
            "family registers itself with gen_jax.tasks.register)"
        )
    return FAMILIES[name]


def able(ability: str) -> list[str]:
    """The names of the families whose runs can do `ability`."""
    return sorted(name for name, registered in FAMILIES.items() if ability in registered.can)


def build(config: ml_collections.ConfigDict) -> Task:
    """Instantiate the task (model, optimizer, objective) that the config describes; a family
    that samples gets the scorer of its samples (`sample_quality.scorer`, or None)."""
    registered = family(config.task.name)
    if "sample" in registered.can:
        return registered.task(config, sample_quality.scorer(config))
    return registered.task(config)


def fit_to_data(config: ml_collections.ConfigDict, spec: DataSpec) -> None:
    """Give the model the data's image shape (and a classifier its number of classes) where the
    experiment leaves them unset, so one experiment file fits any dataset; refuse settings that
    contradict the data, and a task that needs labels on unlabelled data."""
    model, name = config.model, config.task.name
    registered = family(name)
    if registered.needs_labels(config) and not spec.labelled:
        conditional = " (model.num_classes > 0)" if registered.labels == "conditional" else ""
        raise GenJaxError(
            f"a '{name}' run{conditional} needs labelled data, but the training split has no "
            "labels (an image folder is labelled when its images sit in one sub-folder per class)"
        )
    height, width, channels = spec.image_shape
    given = {"image_shape": tuple(spec.image_shape)}
    if registered.labels == "always":
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
