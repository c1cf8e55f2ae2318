"""The forward processes of the diffusion family: x_t = a(t) x_0 + s(t) noise, t in [0, 1].

- DDPM ("ddpm"), variance preserving (a^2 + s^2 = 1), in continuous time: "linear" is the limit
  of Ho et al.'s betas 1e-4..0.02 over 1000 steps, a^2 = exp(-(0.1 t + 9.95 t^2)); "cosine" is
  Nichol & Dhariwal's a^2 = cos^2(pi/2 (t + 0.008) / 1.008), normalised to 1 at t = 0.
- Flow matching ("flow"): the rectified-flow (optimal-transport) path a = 1 - t, s = t.

Both clip a^2 / (a^2 + s^2) to [MIN_SIGNAL, 1 - MIN_SIGNAL], so that every t has a finite
signal-to-noise ratio. A network predicts noise ("epsilon"), DDPM's "v" (a noise - s x_0), or the
path's velocity ("velocity", d x_t / dt); `denoised` turns any of them into estimates of x_0 and
of the noise, which is what the samplers step with. Training draws its times from
`TIME_DISTRIBUTIONS`: uniform, or logit-normal, which spends more of the steps mid-path.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from gen_jax.errors import GenJaxError

MIN_SIGNAL = 1e-6  # of a^2 / (a^2 + s^2): log-SNR stays within +-13.8
OBJECTIVES = ("ddpm", "flow")
SCHEDULES = ("linear", "cosine")
PREDICTIONS = {"ddpm": ("epsilon", "v"), "flow": ("velocity",)}
TIME_DISTRIBUTIONS = ("uniform", "logit_normal")


def _expand(values: jax.Array, x: jax.Array) -> jax.Array:
    """Per-example values (B,) broadcast against images (B, H, W, C)."""
    return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


def check_time_distribution(name: str) -> None:
    """A `task.time_distribution` that `sample_times` knows, or a clear error."""
    if name not in TIME_DISTRIBUTIONS:
        raise GenJaxError(
            f"unknown task.time_distribution '{name}'; use one of {TIME_DISTRIBUTIONS}"
        )


def sample_times(rng: jax.Array, count: int, distribution: str = "uniform") -> jax.Array:
    """`count` training times: uniform in [0, 1), or logit-normal in (0, 1) (the sigmoid of a
    standard normal; Esser et al., 2024's best for rectified flow), which favours the middle of
    the path, where the target is hardest to predict, over its ends."""
    if distribution == "logit_normal":
        return jax.nn.sigmoid(jax.random.normal(rng, (count,)))
    return jax.random.uniform(rng, (count,))


@dataclasses.dataclass(frozen=True)
class GaussianPath:
    """x_t = a(t) x_0 + s(t) noise; t = 0 is the data, t = 1 (almost) pure noise."""

    objective: str = "ddpm"
    schedule: str = "cosine"  # of "ddpm"
    prediction: str = "epsilon"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise GenJaxError(f"unknown task.objective '{self.objective}'; use one of {OBJECTIVES}")
        if self.objective == "ddpm" and self.schedule not in SCHEDULES:
            raise GenJaxError(f"unknown task.schedule '{self.schedule}'; use one of {SCHEDULES}")
        if self.prediction not in PREDICTIONS[self.objective]:
            raise GenJaxError(
                f"task.prediction '{self.prediction}' does not fit task.objective "
                f"'{self.objective}'; use one of {PREDICTIONS[self.objective]}"
            )

    def _signal(self, t: jax.Array) -> jax.Array:
        """DDPM's a^2 (= a^2 / (a^2 + s^2)) before clipping."""
        if self.schedule == "linear":
            return jnp.exp(-(0.1 * t + 9.95 * t**2))
        offset = 0.008
        angle = lambda u: jnp.cos(0.5 * jnp.pi * (u + offset) / (1.0 + offset)) ** 2
        return angle(t) / angle(0.0)

    def _unclipped(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        if self.objective == "flow":
            return 1.0 - t, t
        signal = self._signal(t)
        return jnp.sqrt(signal), jnp.sqrt(1.0 - signal)

    def coefficients(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(a(t), s(t)) for times t."""
        if self.objective == "flow":  # the t at which a^2 / (a^2 + s^2) hits the clip
            low = 1.0 / (1.0 + math.sqrt(1.0 / MIN_SIGNAL - 1.0))
            return self._unclipped(jnp.clip(t, low, 1.0 - low))
        signal = jnp.clip(self._signal(t), MIN_SIGNAL, 1.0 - MIN_SIGNAL)
        return jnp.sqrt(signal), jnp.sqrt(1.0 - signal)

    def velocity(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
        """d x_t / dt = a'(t) x_0 + s'(t) noise at times t (B,): the probability-flow ODE's
        drift when x_0 and the noise are a denoiser's estimates at x_t."""
        _, (da, ds) = jax.jvp(self._unclipped, (t,), (jnp.ones_like(t),))
        return _expand(da, x0) * x0 + _expand(ds, x0) * noise

    def log_snr(self, t: jax.Array) -> jax.Array:
        """log(a^2 / s^2): decreases from the data to the noise."""
        a, s = self.coefficients(t)
        return 2.0 * (jnp.log(a) - jnp.log(s))

    def noised(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
        """x_t for each example's time t (B,)."""
        a, s = self.coefficients(t)
        return _expand(a, x0) * x0 + _expand(s, x0) * noise

    def target(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
        """What the network is trained to output at x_t (the regression target)."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "velocity":  # d/dt ((1 - t) x0 + t noise)
            return noise - x0
        a, s = self.coefficients(t)
        return _expand(a, x0) * noise - _expand(s, x0) * x0  # v

    def denoised(
        self, output: jax.Array, x: jax.Array, t: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Estimates (x_0, noise) at x_t from the network's `output`."""
        a, s = (_expand(c, x) for c in self.coefficients(t))
        if self.prediction == "epsilon":
            return (x - s * output) / a, output
        if self.prediction == "v":  # a^2 + s^2 = 1
            return a * x - s * output, s * x + a * output
        # velocity u = noise - x0 and x = a x0 + s noise with a + s = 1
        return x - s * output, x + a * output
