"""Variational autoencoders: an encoder to a diagonal Gaussian over latents, a decoder to
Bernoulli logits over pixels. Convolutional or the Flax example's MLP (784-500-latent).
`dtype` is the compute precision ("bfloat16" for mixed precision on a GPU or TPU); parameters
and outputs stay float32."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.models.layers import depth_to_space


def gaussian_head(latent_dim: int, dtype: str, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two dense layers to the mean and log-variance of q(z|x), in float32."""
    mean, logvar = (nn.Dense(latent_dim, dtype=dtype)(x) for _ in range(2))
    return mean.astype(jnp.float32), logvar.astype(jnp.float32)


class ConvEncoder(nn.Module):
    """28x28 image -> (mean, log-variance) of q(z|x): two stride-2 convs and a dense layer."""

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
    """Latent -> 28x28 pixel logits: dense to 7x7, then two 2x upsamplings, each a convolution
    to 4x the features followed by `depth_to_space` (see `layers.Upsample`)."""

    features: tuple[int, ...] = (32, 16)
    hidden: int = 256
    channels: int = 1
    dtype: str = "float32"

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype)(z))
        x = nn.gelu(nn.Dense(7 * 7 * self.features[0], dtype=self.dtype)(x))
        x = x.reshape((-1, 7, 7, self.features[0]))
        for features in self.features:
            x = nn.gelu(depth_to_space(nn.Conv(4 * features, (3, 3), dtype=self.dtype)(x)))
        return nn.Conv(self.channels, (3, 3), dtype=self.dtype)(x).astype(jnp.float32)


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
    """Latent -> hidden ReLU layer -> 784 pixel logits, reshaped to the image."""

    hidden: int = 500
    image_shape: tuple[int, int, int] = (28, 28, 1)
    dtype: str = "float32"

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(z))
        x = nn.Dense(math.prod(self.image_shape), dtype=self.dtype)(x)
        return x.reshape((-1, *self.image_shape)).astype(jnp.float32)


class VAE(nn.Module):
    """Encoder and decoder under one set of params; subclasses choose the two networks."""

    encoder: nn.Module
    decoder: nn.Module

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and log-variance of q(z|x)."""
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        """Bernoulli logits of p(x|z), image-shaped."""
        return self.decoder(z)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Decode the posterior mean (creates every parameter at init)."""
        mean, _ = self.encode(x)
        return self.decode(mean)


def conv_vae(latent_dim: int = 32, hidden: int = 256, dtype: str = "float32") -> VAE:
    """The convolutional VAE."""
    encoder = ConvEncoder(latent_dim, hidden=hidden, dtype=dtype)
    return VAE(encoder, ConvDecoder(hidden=hidden, dtype=dtype))


def mlp_vae(latent_dim: int = 20, hidden: int = 500, dtype: str = "float32") -> VAE:
    """The Flax example's VAE: 784-500-latent encoder, latent-500-784 decoder."""
    return VAE(
        MLPEncoder(latent_dim, hidden=hidden, dtype=dtype), MLPDecoder(hidden=hidden, dtype=dtype)
    )
