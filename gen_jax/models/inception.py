"""The FID Inception-v3: TensorFlow's Inception-v3 graph of 2015-12-05, as pytorch-fid, clean-fid,
NVlabs' metrics and TF-GAN run it, up to its 2048-d pool features.

It takes (B, 299, 299, 3) images in TF's input range [-1, 1) ((x - 128) / 128 of uint8 pixels)
and returns (B, 2048). Each convolution's batch norm (no scale, eps 1e-3) is folded into a bias
when the weights are converted (`gen_jax.inception`), so a layer is a convolution, a bias and a
ReLU. Layer names follow the TorchScript file the weights come from (its `mixed_4.tower_1.conv_2`
is `mixed_4/tower_1_conv_2` here), so converting them is renaming. Blocks A-E are Szegedy et
al. (2016), figures 5-7.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

FEATURES = 2048
INPUT_SIZE = 299


class Conv(nn.Module):
    """Convolution + folded batch norm + ReLU. 'SAME' keeps the size (padding k // 2)."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: str = "SAME"
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (*self.kernel, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        y = jax.lax.conv_general_dilated(
            x, kernel, (self.stride,) * 2, self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return nn.relu(y + bias.astype(self.dtype))


def _average_pool(x: jax.Array) -> jax.Array:
    """3x3, stride 1, zero padding left out of the mean (TF's 'SAME' average pool)."""
    return nn.avg_pool(x, (3, 3), padding="SAME", count_include_pad=False)


def _max_pool(x: jax.Array, stride: int = 2) -> jax.Array:
    return nn.max_pool(x, (3, 3), (stride, stride), padding="VALID" if stride == 2 else "SAME")


def _chain(x: jax.Array, layers: Sequence[nn.Module]) -> jax.Array:
    for layer in layers:
        x = layer(x)
    return x


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled towers."""

    pool_features: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = lambda f, k=(1, 1), **kw: Conv(f, k, dtype=self.dtype, **kw)
        tower = [c(48, name="tower_conv"), c(64, (5, 5), name="tower_conv_1")]
        tower_1 = [
            c(64, name="tower_1_conv"),
            c(96, (3, 3), name="tower_1_conv_1"),
            c(96, (3, 3), name="tower_1_conv_2"),
        ]
        pooled = c(self.pool_features, name="tower_2_conv")(_average_pool(x))
        branches = [c(64, name="conv")(x), _chain(x, tower), _chain(x, tower_1), pooled]
        return jnp.concatenate(branches, -1)


class InceptionB(nn.Module):
    """35 -> 17 reduction: a strided 3x3, a strided double 3x3 and a max pool."""

    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = lambda f, k=(1, 1), **kw: Conv(f, k, dtype=self.dtype, **kw)
        tower = [
            c(64, name="tower_conv"),
            c(96, (3, 3), name="tower_conv_1"),
            c(96, (3, 3), stride=2, padding="VALID", name="tower_conv_2"),
        ]
        conv = c(384, (3, 3), stride=2, padding="VALID", name="conv")
        return jnp.concatenate([conv(x), _chain(x, tower), _max_pool(x)], -1)


class InceptionC(nn.Module):
    """17x17 block: 7x7 convolutions factorised into 1x7 and 7x1."""

    channels: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = lambda f, k=(1, 1), **kw: Conv(f, k, dtype=self.dtype, **kw)
        n = self.channels
        tower = [
            c(n, name="tower_conv"),
            c(n, (1, 7), name="tower_conv_1"),
            c(192, (7, 1), name="tower_conv_2"),
        ]
        tower_1 = [
            c(n, name="tower_1_conv"),
            c(n, (7, 1), name="tower_1_conv_1"),
            c(n, (1, 7), name="tower_1_conv_2"),
            c(n, (7, 1), name="tower_1_conv_3"),
            c(192, (1, 7), name="tower_1_conv_4"),
        ]
        pooled = c(192, name="tower_2_conv")(_average_pool(x))
        branches = [c(192, name="conv")(x), _chain(x, tower), _chain(x, tower_1), pooled]
        return jnp.concatenate(branches, -1)


class InceptionD(nn.Module):
    """17 -> 8 reduction."""

    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = lambda f, k=(1, 1), **kw: Conv(f, k, dtype=self.dtype, **kw)
        tower = [
            c(192, name="tower_conv"),
            c(320, (3, 3), stride=2, padding="VALID", name="tower_conv_1"),
        ]
        tower_1 = [
            c(192, name="tower_1_conv"),
            c(192, (1, 7), name="tower_1_conv_1"),
            c(192, (7, 1), name="tower_1_conv_2"),
            c(192, (3, 3), stride=2, padding="VALID", name="tower_1_conv_3"),
        ]
        return jnp.concatenate([_chain(x, tower), _chain(x, tower_1), _max_pool(x)], -1)


class InceptionE(nn.Module):
    """8x8 block with expanded 1x3 / 3x1 outputs; the last one pools by max (as TF's graph)."""

    pool: str = "average"
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = lambda f, k=(1, 1), **kw: Conv(f, k, dtype=self.dtype, **kw)
        a = c(384, name="tower_conv")(x)
        b = c(384, (3, 3), name="tower_1_conv_1")(c(448, name="tower_1_conv")(x))
        pooled = _average_pool(x) if self.pool == "average" else _max_pool(x, stride=1)
        branches = [
            c(320, name="conv")(x),
            c(384, (1, 3), name="tower_mixed_conv")(a),
            c(384, (3, 1), name="tower_mixed_conv_1")(a),
            c(384, (1, 3), name="tower_1_mixed_conv")(b),
            c(384, (3, 1), name="tower_1_mixed_conv_1")(b),
            c(192, name="tower_2_conv")(pooled),
        ]
        return jnp.concatenate(branches, -1)


class InceptionV3(nn.Module):
    """(B, 299, 299, 3) in [-1, 1) -> (B, 2048) pool features."""

    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = self.dtype
        x = Conv(32, (3, 3), stride=2, padding="VALID", dtype=d, name="conv")(x)
        x = Conv(32, (3, 3), padding="VALID", dtype=d, name="conv_1")(x)
        x = _max_pool(Conv(64, (3, 3), dtype=d, name="conv_2")(x))
        x = Conv(80, dtype=d, name="conv_3")(x)
        x = _max_pool(Conv(192, (3, 3), padding="VALID", dtype=d, name="conv_4")(x))
        blocks = [
            InceptionA(32, d, name="mixed"),
            InceptionA(64, d, name="mixed_1"),
            InceptionA(64, d, name="mixed_2"),
            InceptionB(d, name="mixed_3"),
            InceptionC(128, d, name="mixed_4"),
            InceptionC(160, d, name="mixed_5"),
            InceptionC(160, d, name="mixed_6"),
            InceptionC(192, d, name="mixed_7"),
            InceptionD(d, name="mixed_8"),
            InceptionE("average", d, name="mixed_9"),
            InceptionE("max", d, name="mixed_10"),
        ]
        x = _chain(x, blocks)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
