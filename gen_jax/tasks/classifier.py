"""Image classification: softmax cross-entropy, optional label smoothing and random shifts, and
optional test-time flips and translations."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gen_jax import models, optim
from gen_jax.errors import GenJaxError
from gen_jax.models.cnn import FEATURES
from gen_jax.tasks.base import (
    Batch,
    BatchSplits,
    Metrics,
    TrainState,
    mean_of_sums,
    split_value_and_grad,
    step_key,
)


@flax.struct.dataclass
class ClassifierState(TrainState):
    """A classifier run's state: the train state and the network's batch statistics."""

    batch_stats: Any


def random_shift(rng: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
    """Translate each image by up to `max_shift` pixels in each direction, zero-filled."""
    if max_shift == 0:
        return images
    height, width = images.shape[1:3]
    padding = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
    padded = jnp.pad(images, padding)
    offsets = jax.random.randint(rng, (images.shape[0], 2), 0, 2 * max_shift + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(
            image, (offset[0], offset[1], 0), (height, width, image.shape[-1])
        )

    return jax.vmap(crop)(padded, offsets)


class ClassifierTask:
    """Trains `config.model` to predict `batch['label']` from `batch['image']`."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.model = models.build(config.model)
        self.optimizer = optim.build(config.optimizer, config.train.num_steps)
        self.num_classes = config.model.get("num_classes", 10)
        self.label_smoothing = config.task.label_smoothing
        self.max_shift = config.task.max_shift
        self.test_flips = config.task.test_flips
        self.test_shift = config.task.test_shift
        if not isinstance(self.test_shift, int) or self.test_shift < 0:
            raise GenJaxError(
                f"task.test_shift is {self.test_shift!r}; use 0 (off) or a number of pixels"
            )
        self.batch_splits = BatchSplits.of(config.train)

    def init(self, rng: jax.Array, batch: Batch) -> ClassifierState:
        params_rng, dropout_rng, run_rng = jax.random.split(rng, 3)
        rngs = {"params": params_rng, "dropout": dropout_rng}
        variables = self.model.init(rngs, batch["image"], train=False)
        params = variables["params"]
        return ClassifierState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=self.optimizer.init(params),
            rng=run_rng,
        )

    def _cross_entropy(self, logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, self.num_classes), smoothing)
        return optax.softmax_cross_entropy(logits, targets)

    def train_step(self, state: ClassifierState, batch: Batch) -> tuple[ClassifierState, Metrics]:
        shift_rng, dropout_rng = jax.random.split(step_key(state.rng, state.step))
        images = random_shift(shift_rng, batch["image"], self.max_shift)

        if self.batch_splits.count > 1 and state.batch_stats:
            raise GenJaxError(
                f"train.batch_splits={self.batch_splits.count}, but model "
                f"'{type(self.model).__name__}' has batch norm, whose statistics need the whole "
                "batch; set train.batch_splits=1"
            )

        def loss_fn(params, images, labels, rng):
            logits, updates = self.model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                images,
                train=True,
                rngs={"dropout": rng},
                mutable=["batch_stats"],
            )
            loss = self._cross_entropy(logits, labels, self.label_smoothing).mean()
            accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
            return loss, (accuracy, updates.get("batch_stats", {}))

        value_and_grad = split_value_and_grad(loss_fn, self.batch_splits)
        (loss, (accuracy, batch_stats)), grads = value_and_grad(
            state.params, images, batch["label"], rng=dropout_rng
        )
        new_state = state.apply_gradients(grads, self.optimizer, batch_stats=batch_stats)
        metrics = {
            "loss": loss,
            "accuracy": accuracy,
            "grad_norm": optax.global_norm(grads),
        }
        return new_state, metrics

    def logits(self, state: ClassifierState, images: jax.Array) -> jax.Array:
        """Class logits in inference mode (running batch statistics, no dropout). With
        `task.test_flips`, the mean log-probabilities of each image and its mirror image; with
        `task.test_shift` s, those averaged with the mean of the image's two diagonal
        translations by s pixels (reflected at the borders), weighted 1/2, 1/4, 1/4 (airbench's
        test-time augmentation)."""
        variables = {"params": state.params, "batch_stats": state.batch_stats}

        def predict(x):
            logits = self.model.apply(variables, x, train=False)
            if not self.test_flips:
                return logits
            mirrored = self.model.apply(variables, x[:, :, ::-1], train=False)
            return (jax.nn.log_softmax(logits) + jax.nn.log_softmax(mirrored)) / 2

        logits, shift = predict(images), self.test_shift
        if not shift:
            return logits
        height, width = images.shape[1:3]
        padded = jnp.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
        up_left = padded[:, :height, :width]
        down_right = padded[:, 2 * shift : 2 * shift + height, 2 * shift : 2 * shift + width]
        translated = [jax.nn.log_softmax(predict(x)) for x in (up_left, down_right)]
        return jax.nn.log_softmax(logits) / 2 + (translated[0] + translated[1]) / 4

    def features(self, state: ClassifierState, images: jax.Array) -> jax.Array:
        """Penultimate activations of `images` in inference mode."""
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return self.features_and_logits(variables, images)[0]

    def features_and_logits(self, variables: dict, images: jax.Array) -> tuple[jax.Array, ...]:
        """Penultimate activations (the feature space of FID) and logits, in inference mode."""
        logits, sown = self.model.apply(variables, images, train=False, mutable=["intermediates"])
        return sown["intermediates"][FEATURES][0], logits

    def pictures(self, state: ClassifierState, images: jax.Array) -> dict[str, jax.Array]:
        del state, images  # a classifier makes no pictures
        return {}

    def eval_step(self, state: ClassifierState, batch: Batch, final: bool = False) -> Metrics:
        del final  # periodic and final evaluations are the same
        logits = self.logits(state, batch["image"])
        mask = batch["mask"]
        return {
            "loss": jnp.sum(self._cross_entropy(logits, batch["label"], 0.0) * mask),
            "accuracy": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
            "count": jnp.sum(mask),
        }

    def summarize(self, outputs: list[Metrics]) -> dict[str, float]:
        return mean_of_sums(outputs)
