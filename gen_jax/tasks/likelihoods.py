"""Pixel likelihoods p(x|z) of a VAE's decoder outputs, by `task.likelihood`:

- "bernoulli": intensities in [0, 1] binarised anew at each use, one logit per pixel and channel;
- "logistic": the 8-bit images as they are, per pixel and channel a logistic (mean, log-scale)
  discretized into the 256 levels (PixelCNN++, Salimans et al. 2017, without the mixture; the
  decoder's first C output channels are the means, the last C the log-scales).

Both give log p(x|z) per example in nats and map decoder outputs to images in [0, 1].
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Protocol

import jax
import jax.numpy as jnp
import optax

from gen_jax.errors import GenJaxError

LEVELS = 256  # of an 8-bit pixel
# Below this bin width (in units of the logistic's scale), log(1 - exp(-w)) is log w to within
# w / 2 = 5e-7 nats, under float32's resolution of log w; exp(-log_scale) may underflow further on.
TINY_BIN = 1e-6


# Per-pixel math runs on (batch, pixels) views: XLA's CPU backend does not vectorise elementwise
# ops over an image-shaped array's trailing axis of size 1 (5x slower; benchmarks/README.md).
def flat(images: jax.Array) -> jax.Array:
    """(batch, height, width, channels) -> (batch, pixels), a free reshape."""
    return images.reshape(images.shape[0], -1)


def binarize(rng: jax.Array, images: jax.Array) -> jax.Array:
    """Each pixel drawn as Bernoulli(intensity), intensities in [0, 1]."""
    return jax.random.bernoulli(rng, flat(images)).astype(images.dtype).reshape(images.shape)


def bernoulli_log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
    """log p(x | logits), summed over all but the leading axis."""
    return -optax.sigmoid_binary_cross_entropy(flat(logits), flat(x)).sum(-1)


def discretized_logistic_log_prob(
    x: jax.Array, mean: jax.Array, log_scale: jax.Array, low: float, high: float
) -> jax.Array:
    """Elementwise log P(x) of pixels at the levels low + k (high - low) / 255 (x is rounded to
    the nearest), under a logistic whose mass is binned at those levels, the end bins open.

    A bin [b, a] (in units of the scale around the mean) has sigmoid(a) - sigmoid(b) =
    sigmoid(a) sigmoid(-b) (1 - exp(-(a - b))): log-sigmoids and the log of the bin's width term,
    never a difference of nearly equal CDFs, so it stays exact far in the tails and for bins much
    narrower than the scale (PixelCNN++ switches to the density there)."""
    bin_width = (high - low) / (LEVELS - 1)
    level = jnp.clip(jnp.round((x - low) / bin_width), 0, LEVELS - 1)
    centred = low + level * bin_width - mean
    inverse_scale = jnp.exp(-log_scale)
    below_upper = jax.nn.log_sigmoid(inverse_scale * (centred + bin_width / 2))  # log P(X < a)
    above_lower = jax.nn.log_sigmoid(-inverse_scale * (centred - bin_width / 2))  # log P(X > b)
    log_width = math.log(bin_width) - log_scale  # log (a - b)
    width = jnp.exp(log_width)
    # max() keeps the unused branch's gradient finite where the bin is tiny
    log_mass = jnp.where(
        width < TINY_BIN, log_width, jnp.log(-jnp.expm1(-jnp.maximum(width, TINY_BIN)))
    )
    first, last = level == 0, level == LEVELS - 1
    return (
        jnp.where(last, 0.0, below_upper)
        + jnp.where(first, 0.0, above_lower)
        + jnp.where(first | last, 0.0, log_mass)
    )


class Likelihood(Protocol):
    """What a VAE task needs of its pixel likelihood."""

    outputs_per_channel: int  # decoder outputs per pixel and channel

    def observed(self, rng: jax.Array, images: jax.Array) -> jax.Array:
        """The values the likelihood models, from preprocessed `images`."""

    def log_likelihood(self, outputs: jax.Array, x: jax.Array) -> jax.Array:
        """log p(x | decoder outputs) per example (summed over pixels and channels), in nats."""

    def images(self, outputs: jax.Array) -> jax.Array:
        """Decoder outputs as images in [0, 1], for pictures."""


@dataclasses.dataclass(frozen=True)
class Bernoulli:
    """Dynamically binarised pixels: each use draws x ~ Bernoulli(intensity); one logit each."""

    outputs_per_channel: ClassVar[int] = 1

    def observed(self, rng: jax.Array, images: jax.Array) -> jax.Array:
        """A fresh binarisation of intensities in [0, 1]."""
        return binarize(rng, images)

    def log_likelihood(self, outputs: jax.Array, x: jax.Array) -> jax.Array:
        """Bernoulli log-likelihood of binary `x` under the logits `outputs`."""
        return bernoulli_log_likelihood(outputs, x)

    def images(self, outputs: jax.Array) -> jax.Array:
        """The pixel probabilities."""
        return jax.nn.sigmoid(outputs)


@dataclasses.dataclass(frozen=True)
class DiscretizedLogistic:
    """8-bit images in [low, high], as they are; outputs are C means then C log-scales."""

    low: float
    high: float
    outputs_per_channel: ClassVar[int] = 2

    def observed(self, rng: jax.Array, images: jax.Array) -> jax.Array:
        """The images themselves (nothing is drawn)."""
        del rng
        return images

    def log_likelihood(self, outputs: jax.Array, x: jax.Array) -> jax.Array:
        """Discretized logistic log-likelihood of `x`, summed over pixels and channels."""
        mean, log_scale = jnp.split(outputs, 2, axis=-1)
        log_prob = discretized_logistic_log_prob(
            flat(x), flat(mean), flat(log_scale), self.low, self.high
        )
        return log_prob.sum(-1)

    def images(self, outputs: jax.Array) -> jax.Array:
        """The means, clipped to [low, high] and mapped to [0, 1]."""
        mean = jnp.split(outputs, 2, axis=-1)[0]
        return (jnp.clip(mean, self.low, self.high) - self.low) / (self.high - self.low)


LIKELIHOODS = ("bernoulli", "logistic")


def build(name: str, pixel_range: tuple[float, float]) -> Likelihood:
    """The likelihood `task.likelihood` names, for images preprocessed to `pixel_range`."""
    if name == "bernoulli":
        if tuple(pixel_range) != (0.0, 1.0):
            raise GenJaxError(
                f"task.likelihood='bernoulli' binarises intensities in [0, 1], but the images "
                f"are preprocessed to {list(pixel_range)}: set data.preprocess=('scale_to_unit',) "
                "or task.likelihood='logistic'"
            )
        return Bernoulli()
    if name == "logistic":
        return DiscretizedLogistic(*pixel_range)
    raise GenJaxError(f"unknown task.likelihood '{name}'; use one of {LIKELIHOODS}")
