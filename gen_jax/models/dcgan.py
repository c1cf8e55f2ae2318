"""DCGAN generator and discriminator, optionally class-conditional (cGAN).

The generator maps noise to images in [-1, 1]: dense -> reshape -> 2x upsamplings with batch
norm and leaky ReLU -> tanh. The discriminator is strided convolutions with leaky ReLU and a
linear output (a logit, or a critic value for Wasserstein losses); conditioning enters the
generator as a one-hot vector beside the noise and the discriminator as a projection
(Miyato & Koyama, 2018).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.errors import GenJaxError
from gen_jax.models.layers import DOWNSAMPLINGS, UPSAMPLINGS, Upsample, downsample

NORMS = ("batch", "layer", "none")


def _normalize(kind: str, train: bool) -> nn.Module | None:
    if kind == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9)
    if kind == "layer":
        return nn.LayerNorm()
    if kind == "none":
        return None
    raise ValueError(f"unknown norm '{kind}'; use one of {NORMS}")


class Generator(nn.Module):
    """Noise (B, noise_dim) [+ labels (B,)] -> images (B, size, size, channels) in [-1, 1].

    `features[0]` channels at size / 2**(len(features) - 1), then one 2x upsampling per further
    entry of `features`, then a 3x3 convolution to `channels`.
    """

    image_size: int = 28
    channels: int = 1
    features: tuple[int, ...] = (128, 64, 32)
    num_classes: int = 0  # > 0: class-conditional
    upsampling: str = "pixel_shuffle"

    @nn.compact
    def __call__(
        self, noise: jax.Array, labels: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        if self.num_classes:
            noise = jnp.concatenate([noise, jax.nn.one_hot(labels, self.num_classes)], axis=-1)
        start = self.image_size // 2 ** (len(self.features) - 1)
        x = nn.Dense(start * start * self.features[0], use_bias=False)(noise)
        x = x.reshape((-1, start, start, self.features[0]))
        x = nn.leaky_relu(_normalize("batch", train)(x), 0.2)
        for features in self.features[1:]:
            x = Upsample(features, self.upsampling, use_bias=False)(x)
            x = nn.leaky_relu(_normalize("batch", train)(x), 0.2)
        return jnp.tanh(nn.Conv(self.channels, (3, 3))(x))


class Discriminator(nn.Module):
    """Images [+ labels] -> one real-valued score per image (B,).

    2x downsamplings (4x4 windows, `layers.downsample`) with leaky ReLU, normalised after the
    first; `norm="batch"` is DCGAN's, while a WGAN-GP critic needs a per-example norm ("layer")
    or none.
    """

    features: tuple[int, ...] = (64, 128)
    num_classes: int = 0
    norm: str = "batch"
    downsampling: str = "strided"

    @nn.compact
    def __call__(
        self, images: jax.Array, labels: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        x = images
        for index, features in enumerate(self.features):
            norm = _normalize(self.norm, train) if index > 0 else None
            # a bias before batch norm is cancelled by it: no gradient, only Adam-amplified noise
            bias = not isinstance(norm, nn.BatchNorm)
            x = downsample(x, features, self.downsampling, use_bias=bias)
            x = nn.leaky_relu(norm(x) if norm else x, 0.2)
        x = x.reshape((x.shape[0], -1))
        score = nn.Dense(1)(x)[:, 0]
        if self.num_classes:  # projection: <embed(label), features>
            embedding = nn.Embed(self.num_classes, x.shape[-1])(labels)
            score = score + jnp.sum(embedding * x, axis=-1)
        return score


@dataclasses.dataclass(frozen=True)
class GANModels:
    """The two players; each is initialised and applied on its own (own params, own optimizer)."""

    generator: Generator
    discriminator: Discriminator
    noise_dim: int
    num_classes: int


def dcgan(
    noise_dim: int = 64,
    image_size: int = 28,
    channels: int = 1,
    generator_features: tuple[int, ...] = (128, 64, 32),
    discriminator_features: tuple[int, ...] = (64, 128),
    discriminator_norm: str = "batch",
    num_classes: int = 0,
    upsampling: str = "pixel_shuffle",
    downsampling: str = "strided",
) -> GANModels:
    """A DCGAN pair; 28x28x1 by default, 32x32x3 or 64x64x3 with more generator features."""
    steps = len(generator_features) - 1
    if image_size % 2**steps:
        raise GenJaxError(
            f"model.image_size {image_size} is not divisible by 2**{steps} (one 2x upsampling per "
            f"generator feature after the first); change model.generator_features"
        )
    if discriminator_norm not in NORMS:
        raise GenJaxError(f"unknown model.discriminator_norm '{discriminator_norm}'; use {NORMS}")
    if upsampling not in UPSAMPLINGS:
        raise GenJaxError(f"unknown model.upsampling '{upsampling}'; use one of {UPSAMPLINGS}")
    if downsampling not in DOWNSAMPLINGS:
        raise GenJaxError(
            f"unknown model.downsampling '{downsampling}'; use one of {DOWNSAMPLINGS}"
        )
    halvings = len(discriminator_features)
    if downsampling == "space_to_depth" and image_size % 2**halvings:
        raise GenJaxError(
            f"model.image_size {image_size} is not divisible by 2**{halvings}: 'space_to_depth' "
            "halves it once per discriminator feature; use model.downsampling='strided' or fewer "
            "model.discriminator_features"
        )
    generator = Generator(image_size, channels, generator_features, num_classes, upsampling)
    discriminator = Discriminator(
        discriminator_features, num_classes, discriminator_norm, downsampling
    )
    return GANModels(generator, discriminator, noise_dim, num_classes)
