"""Three ways for a decoder to upsample 7x7 -> 28x28, timed on the CPU (forward + backward).

    python benchmarks/upsampling.py

Same feature counts for each: two 2x upsamplings (features from --features) and a final 1-channel
convolution, batch 128. Prints ms per step and the ratio to depth_to_space (what
gen_jax.models.vae.ConvDecoder uses).
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from common import timings  # this folder; run as a script

from gen_jax.models.layers import depth_to_space


def resize_conv(x: jax.Array, features: int) -> jax.Array:
    batch, height, width, channels = x.shape
    x = jax.image.resize(x, (batch, 2 * height, 2 * width, channels), "nearest")
    return nn.Conv(features, (3, 3))(x)


UPSAMPLERS = {
    "ConvTranspose, stride 2": lambda x, f: nn.ConvTranspose(f, (3, 3), strides=(2, 2))(x),
    "nearest resize + conv": resize_conv,
    "conv to 4x + depth_to_space": lambda x, f: depth_to_space(nn.Conv(4 * f, (3, 3))(x)),
}


class Upsampler(nn.Module):
    method: str
    features: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for features in self.features:
            x = nn.gelu(UPSAMPLERS[self.method](x, features))
        return nn.Conv(1, (3, 3))(x)


def milliseconds_per_step(method: str, features: tuple[int, ...], repeats: int = 10) -> float:
    x = jnp.asarray(np.random.default_rng(0).random((128, 7, 7, features[0]), np.float32))
    model = Upsampler(method, features)
    params = model.init(jax.random.PRNGKey(0), x)
    step = jax.jit(jax.grad(lambda p, x: model.apply(p, x).sum(), argnums=(0, 1)))
    (seconds,) = timings(lambda: step(params, x), repeats, warmup=1, back_to_back=True)
    return seconds * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, nargs="+", default=[32, 16])
    features = tuple(parser.parse_args().features)
    times = {method: milliseconds_per_step(method, features) for method in UPSAMPLERS}
    baseline = times["conv to 4x + depth_to_space"]
    print(f"features {features}, batch 128, jax {jax.__version__}, {jax.devices()[0].platform}")
    print("| upsampling | ms per forward+backward | ratio to depth_to_space |")
    print("|---|---|---|")
    for method, ms in times.items():
        print(f"| {method} | {ms:.1f} | {ms / baseline:.2f} |")


if __name__ == "__main__":
    main()
