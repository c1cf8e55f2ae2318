"""Variational autoencoders: an encoder to a diagonal Gaussian over latents, a decoder to
`outputs_per_channel` numbers per pixel and channel, which the task's likelihood reads (one
Bernoulli logit; a logistic's mean and log-scale). Convolutional or the Flax example's MLP
(784-500-latent), for images of `image_shape` (height, width, channels).
`dtype` is the compute precision ("bfloat16" for mixed precision on a GPU or TPU); parameters
and outputs stay float32."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.errors import GenJaxError
from gen_jax.models.layers import depth_to_space


def gaussian_head(latent_dim: int, dtype: str, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two dense layers to the mean and log-variance of q(z|x), in float32."""
    mean, logvar = (nn.Dense(latent_dim, dtype=dtype)(x) for _ in range(2))
    return mean.astype(jnp.float32), logvar.astype(jnp.float32)


class ConvEncoder(nn.Module):
    """Image -> (mean, log-variance) of q(z|x): two stride-2 convs and a dense layer."""

    latent_dim: int
    features: tuple[int, ...] = (32, 64)
    hidden: int = 256
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for features in self.features:
            x = nn.gelu(nn.Conv(features, (3, 3), strides=(2, 2), dtype=self.dtype)(x))
        x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype)(x.reshape((x.shape[0], -1))))
        return gaussian_head(self.latent_dim, self.dtype, x)


class ConvDecoder(nn.Module):
    """Latent -> `output_shape` (height, width, outputs): dense to 1/4 of the height and width
    (28x28 -> 7x7), then two 2x upsamplings, each a convolution to 4x the features followed by
    `depth_to_space` (see `layers.Upsample`)."""

    output_shape: tuple[int, int, int] = (28, 28, 1)
    features: tuple[int, ...] = (32, 16)
    hidden: int = 256
    dtype: str = "float32"

    @property
    def scale(self) -> int:
        """How many times larger the output is than the dense layer's grid, on each side."""
        return 2 ** len(self.features)

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        height, width, outputs = self.output_shape
        grid = (height // self.scale, width // self.scale, self.features[0])
        x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype)(z))
        x = nn.gelu(nn.Dense(math.prod(grid), dtype=self.dtype)(x))
        x = x.reshape((-1, *grid))
        for features in self.features:
            x = nn.gelu(depth_to_space(nn.Conv(4 * features, (3, 3), dtype=self.dtype)(x)))
        return nn.Conv(outputs, (3, 3), dtype=self.dtype)(x).astype(jnp.float32)


class MLPEncoder(nn.Module):
    """Flattened image -> hidden ReLU layer -> (mean, log-variance), as in the Flax VAE example."""

    latent_dim: int
    hidden: int = 500
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x.reshape((x.shape[0], -1))))
        return gaussian_head(self.latent_dim, self.dtype, x)


class MLPDecoder(nn.Module):
    """Latent -> hidden ReLU layer -> dense outputs (784 for MNIST), reshaped to `output_shape`."""

    hidden: int = 500
    output_shape: tuple[int, int, int] = (28, 28, 1)
    dtype: str = "float32"

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(z))
        x = nn.Dense(math.prod(self.output_shape), dtype=self.dtype)(x)
        return x.reshape((-1, *self.output_shape)).astype(jnp.float32)


class VAE(nn.Module):
    """Encoder and decoder under one set of params; subclasses choose the two networks."""

    encoder: nn.Module
    decoder: nn.Module

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and log-variance of q(z|x)."""
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        """The parameters of p(x|z): (batch, height, width, outputs_per_channel * channels)."""
        return self.decoder(z)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Decode the posterior mean (creates every parameter at init)."""
        mean, _ = self.encode(x)
        return self.decode(mean)


def decoder_output_shape(
    image_shape: tuple[int, int, int], outputs_per_channel: int
) -> tuple[int, int, int]:
    """The decoder's output shape for images of `image_shape`, refused unless it is (height,
    width, channels) of positive sizes."""
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise GenJaxError(
            f"model.image_shape {tuple(image_shape)} is not (height, width, channels), e.g. "
            "(28, 28, 1) or (32, 32, 3)"
        )
    if outputs_per_channel < 1:
        raise GenJaxError(f"model.outputs_per_channel {outputs_per_channel} must be at least 1")
    height, width, channels = image_shape
    return height, width, outputs_per_channel * channels


def conv_vae(
    latent_dim: int = 32,
    hidden: int = 256,
    image_shape: tuple[int, int, int] = (28, 28, 1),
    outputs_per_channel: int = 1,
    dtype: str = "float32",
) -> VAE:
    """The convolutional VAE, for images whose height and width the decoder's upsamplings reach
    (divisible by 4)."""
    outputs = decoder_output_shape(image_shape, outputs_per_channel)
    decoder = ConvDecoder(outputs, hidden=hidden, dtype=dtype)
    height, width, _ = image_shape
    if height % decoder.scale or width % decoder.scale:
        raise GenJaxError(
            f"conv_vae cannot decode {height}x{width} images (model.image_shape "
            f"{tuple(image_shape)}): it supports a height and width divisible by {decoder.scale}, "
            "e.g. 28x28, 32x32 or 64x64; mlp_vae takes any size"
        )
    return VAE(ConvEncoder(latent_dim, hidden=hidden, dtype=dtype), decoder)


def mlp_vae(
    latent_dim: int = 20,
    hidden: int = 500,
    image_shape: tuple[int, int, int] = (28, 28, 1),
    outputs_per_channel: int = 1,
    dtype: str = "float32",
) -> VAE:
    """The Flax example's VAE: 784-500-latent encoder, latent-500-784 decoder (for MNIST)."""
    outputs = decoder_output_shape(image_shape, outputs_per_channel)
    return VAE(
        MLPEncoder(latent_dim, hidden=hidden, dtype=dtype),
        MLPDecoder(hidden, outputs, dtype=dtype),
    )
