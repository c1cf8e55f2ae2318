"""Building blocks shared by the generative models."""

from __future__ import annotations

import flax.linen as nn
import jax

UPSAMPLINGS = ("pixel_shuffle", "transpose")


def depth_to_space(x: jax.Array, block: int = 2) -> jax.Array:
    """Rearrange (B, H, W, block*block*C) to (B, block*H, block*W, C) ("pixel shuffle")."""
    batch, height, width, channels = x.shape
    features = channels // (block * block)
    x = x.reshape(batch, height, width, block, block, features).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height * block, width * block, features)


class Upsample(nn.Module):
    """2x spatial upsampling to `features` channels.

    "pixel_shuffle": a 3x3 convolution to 4x the features, then `depth_to_space`;
    "transpose": a stride-2 transposed convolution (the DCGAN paper's layer). XLA's CPU backend
    runs the transposed convolution ~5x slower for the same shapes (benchmarks/upsampling.py).
    """

    features: int
    mode: str = "pixel_shuffle"
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.mode == "pixel_shuffle":
            return depth_to_space(nn.Conv(4 * self.features, (3, 3), use_bias=self.use_bias)(x))
        if self.mode == "transpose":
            return nn.ConvTranspose(self.features, (4, 4), strides=(2, 2), use_bias=self.use_bias)(
                x
            )
        raise ValueError(f"unknown upsampling '{self.mode}'; use one of {UPSAMPLINGS}")
