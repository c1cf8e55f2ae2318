"""The fast CIFAR-10 network of Keller Jordan's airbench (airbench94): a fixed whitening layer, then
three conv groups, each conv-pool-norm-GELU-conv-norm-GELU, then a max pool and a linear head.

The first layer's 2x2 filters whiten the image patches: they are the eigenvectors of the patches'
second moment, scaled by 1 / sqrt(eigenvalue + eps), and their negatives (so that GELU keeps both
signs). They are computed from the images the network is initialised with (the training state's
example batch, spread over the training split) and kept with the batch statistics, as the
statistic of the data they are: no optimizer or weight decay moves them (their bias is a
parameter, which airbench trains for 3 epochs only: `optimizer.freeze`). Batch norm has no
scale; each 3x3 convolution starts as the identity on its first input channels, the rest as
PyTorch's defaults; the logits are scaled by `scaling` (1/9).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.models.cnn import FEATURES
from gen_jax.models.layers import max_pool


def patches(images: jax.Array, size: int) -> jax.Array:
    """Every size x size patch of (B, H, W, C) images, flattened in (row, column, channel) order:
    (B * (H - size + 1) * (W - size + 1), size * size * C), the order of a conv kernel's HWI."""
    height, width = images.shape[1] - size + 1, images.shape[2] - size + 1
    shifted = [images[:, i : i + height, j : j + width] for i in range(size) for j in range(size)]
    return jnp.concatenate(shifted, axis=-1).reshape(-1, size * size * images.shape[-1])


def whitening_kernel(images: jax.Array, size: int = 2, eps: float = 5e-4) -> jax.Array:
    """A (size, size, C, 2 * size * size * C) conv kernel: its first half maps the images'
    patches to decorrelated coordinates of unit second moment (up to eps), its second half is the
    first's negative."""
    flat = patches(images.astype(jnp.float32), size)
    covariance = jnp.matmul(flat.T, flat, precision=jax.lax.Precision.HIGHEST) / flat.shape[0]
    values, vectors = jnp.linalg.eigh(covariance)  # ascending; largest first below
    scaled = vectors[:, ::-1] / jnp.sqrt(values[::-1] + eps)
    kernel = jnp.concatenate([scaled, -scaled], axis=1)
    return kernel.reshape(size, size, images.shape[-1], -1)


TORCH_DEFAULT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # conv and linear


def identity_then_default(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """PyTorch's default conv initialisation, with the first `in` output channels set to pass
    their input channel through (`torch.nn.init.dirac_`), as airbench starts its convs."""
    kernel = TORCH_DEFAULT(key, shape, dtype)
    height, width, inputs, outputs = shape
    count = min(inputs, outputs)
    identity = jnp.zeros((height, width, inputs, count), dtype)
    identity = identity.at[height // 2, width // 2].set(jnp.eye(inputs, count, dtype=dtype))
    return kernel.at[..., :count].set(identity)


class ConvGroup(nn.Module):
    """conv3x3 - max pool 2 - batch norm - GELU - conv3x3 - batch norm - GELU."""

    features: int
    momentum: float
    dtype: str

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        def conv(x):
            layer = nn.Conv(
                self.features,
                (3, 3),
                use_bias=False,
                kernel_init=identity_then_default,
                dtype=self.dtype,
            )
            return layer(x)

        def norm(x):
            layer = nn.BatchNorm(
                use_running_average=not train,
                momentum=self.momentum,
                epsilon=1e-12,
                use_scale=False,
                dtype=self.dtype,
            )
            return nn.gelu(layer(x), approximate=False)

        x = max_pool(conv(x), 2)
        return norm(conv(norm(x)))


class Airbench(nn.Module):
    """Normalised (B, 32, 32, 3) images in, class logits out; the pooled features are sown as the
    classifier family's `features`."""

    num_classes: int = 10
    widths: tuple[int, ...] = (64, 256, 256)
    whitening_size: int = 2
    whitening_eps: float = 5e-4
    batchnorm_momentum: float = 0.6  # Flax's: the running statistics keep 0.6 per step
    scaling: float = 1 / 9
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        images = x
        kernel = self.variable(
            "batch_stats",
            "whitening_kernel",
            lambda: whitening_kernel(images, self.whitening_size, self.whitening_eps),
        ).value
        bias = self.param("whitening_bias", nn.initializers.zeros, (kernel.shape[-1],))
        x = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            (1, 1),
            "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        x = nn.gelu(x + bias.astype(self.dtype), approximate=False)
        for width in self.widths:
            x = ConvGroup(width, self.batchnorm_momentum, self.dtype)(x, train)
        x = max_pool(x, 3)
        x = x.reshape((x.shape[0], -1))
        self.sow("intermediates", FEATURES, x)
        head = nn.Dense(
            self.num_classes, use_bias=False, kernel_init=TORCH_DEFAULT, dtype=self.dtype
        )
        logits = head(x)
        return (logits * self.scaling).astype(jnp.float32)
