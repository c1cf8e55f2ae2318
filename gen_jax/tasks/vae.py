"""Variational autoencoders: ELBO (with beta and KL warm-up) or the importance-weighted bound
(IWAE) as the objective, under a pixel likelihood (`likelihoods`: Bernoulli on dynamically
binarised images, or a discretized logistic on 8-bit ones); test ELBO and importance-sampled NLL
in nats, and the NLL in bits per dimension.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gen_jax import data, models, optim, sample_quality
from gen_jax.errors import GenJaxError
from gen_jax.tasks import likelihoods
from gen_jax.tasks.base import (
    Batch,
    BatchSplits,
    Metrics,
    TrainState,
    check_image_shape,
    example_keys,
    means_and_scores,
    split_value_and_grad,
    step_key,
)

OBJECTIVES = ("elbo", "iwae")


# ----------------------------------------------------------------------------- the math
def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over the last axis."""
    return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=-1)


def gaussian_log_density(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z; mean, exp(logvar)), summed over the last axis."""
    return -0.5 * jnp.sum(
        math.log(2 * math.pi) + logvar + jnp.square(z - mean) * jnp.exp(-logvar), axis=-1
    )


def reparameterize(noise: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """Draws from q(z|x) = N(mean, exp(logvar)) given standard normal `noise`."""
    return mean + jnp.exp(0.5 * logvar) * noise


def sample_latents(keys: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """One reparameterised draw from q(z|x) per key: shape (keys, batch, latent). Draw i depends
    only on keys[i], so the keys may be taken in chunks without changing the draws."""
    noise = jax.vmap(lambda key: jax.random.normal(key, mean.shape, mean.dtype))(keys)
    return reparameterize(noise, mean, logvar)


def log_weights(
    log_px_z: Callable[[jax.Array, jax.Array], jax.Array],
    x: jax.Array,
    z: jax.Array,
    mean: jax.Array,
    logvar: jax.Array,
) -> jax.Array:
    """log p(x, z) - log q(z|x) for each of the k latents z (k, batch): importance log-weights.
    `log_px_z(z, x)` is the per-example log-likelihood of images `x` decoded from latents `z`."""
    k, batch = z.shape[:2]
    repeated_x = jnp.broadcast_to(x, (k, *x.shape)).reshape(k * batch, *x.shape[1:])
    log_px = log_px_z(z.reshape(k * batch, -1), repeated_x).reshape(k, batch)
    zeros = jnp.zeros_like(mean)
    return log_px + gaussian_log_density(z, zeros, zeros) - gaussian_log_density(z, mean, logvar)


def iw_bound(weights: jax.Array) -> jax.Array:
    """The importance-weighted bound log (1/k) sum_i w_i from log-weights (k, batch)."""
    return jax.nn.logsumexp(weights, axis=0) - math.log(weights.shape[0])


# ----------------------------------------------------------------------------- the task
VAEState = TrainState  # a VAE carries one network's parameters and optimizer state


def _check_objective(task: ml_collections.ConfigDict) -> None:
    """Refuse settings the chosen objective would silently ignore."""
    if task.objective not in OBJECTIVES:
        raise GenJaxError(f"unknown task.objective '{task.objective}'; use one of {OBJECTIVES}")
    if task.train_samples < 1:
        raise GenJaxError(f"task.train_samples {task.train_samples} must be at least 1")
    if task.objective == "elbo" and task.train_samples != 1:
        raise GenJaxError(
            f"task.train_samples {task.train_samples} is the k of the 'iwae' objective; the "
            "'elbo' objective draws one sample: set task.objective='iwae' or task.train_samples=1"
        )
    defaults = {"beta": 1.0, "kl_warmup_steps": 0}  # the KL weight's settings
    off = [f"task.{key}={task[key]}" for key, value in defaults.items() if task[key] != value]
    if task.objective == "iwae" and off:
        raise GenJaxError(
            f"{', '.join(off)}: beta and kl_warmup_steps weight the ELBO's KL term, which the "
            "'iwae' objective does not have; set task.objective='elbo' or leave them at 1.0 and 0"
        )


class VAETask:
    """Trains `config.model` (a VAE) on `batch['image']` under `task.likelihood`: binarised anew
    each step ("bernoulli") or as they are ("logistic")."""

    def __init__(self, config: ml_collections.ConfigDict, scorer=None):
        task = config.task
        _check_objective(task)
        self.scorer, self.prior_samples = scorer, task.get("prior_samples", 0)
        if scorer is not None:
            sample_quality.check_sample_count(
                task.neighbours, self.prior_samples, "task.prior_samples"
            )
        self.low, self.high = data.pixel_range(config.data)
        self.likelihood = likelihoods.build(task.likelihood, (self.low, self.high))
        outputs_per_channel = self.likelihood.outputs_per_channel
        self.model = models.build(config.model, outputs_per_channel=outputs_per_channel)
        self.optimizer = optim.build(config.optimizer, config.train.num_steps)
        self.latent_dim = config.model.latent_dim
        self.latent_shape, self.num_classes = (self.latent_dim,), 0
        self.objective, self.train_samples = task.objective, task.train_samples
        self.beta, self.warmup_steps = task.beta, task.kl_warmup_steps
        self.eval_samples, self.final_eval_samples = task.eval_samples, task.final_eval_samples
        self.sample_chunk, self.eval_seed = task.eval_sample_chunk, task.eval_seed
        self.batch_splits = BatchSplits.of(config.train)
        for key in ("eval_samples", "final_eval_samples"):
            if task[key] > self.sample_chunk and task[key] % self.sample_chunk:
                raise GenJaxError(
                    f"task.{key}={task[key]} is not a multiple of task.eval_sample_chunk="
                    f"{self.sample_chunk}; the samples are decoded that many at a time"
                )

    def init(self, rng: jax.Array, batch: Batch) -> VAEState:
        params_rng, run_rng = jax.random.split(rng)
        params = self.model.init(params_rng, batch["image"])["params"]
        latents = jnp.zeros((1, self.latent_dim))
        made = jax.eval_shape(self.decoded_images, params, latents).shape[1:]
        check_image_shape(
            made,
            batch["image"],
            "the VAE decodes",
            "set config.model.image_shape to the data's (height, width, channels)",
        )
        return VAEState(jnp.zeros((), jnp.int32), params, self.optimizer.init(params), run_rng)

    def encode(self, params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and log-variance of q(z|x)."""
        return self.model.apply({"params": params}, x, method="encode")

    def decode(self, params, z: jax.Array) -> jax.Array:
        """The decoder's outputs, the parameters of p(x|z) that `task.likelihood` reads."""
        return self.model.apply({"params": params}, z, method="decode")

    def decoded_images(self, params, z: jax.Array) -> jax.Array:
        """Images in [0, 1] decoded from latents `z` (pixel probabilities, or logistic means)."""
        return self.likelihood.images(self.decode(params, z))

    # ------------------------------------------------------------------ what Run asks
    sampling_options = ()  # a VAE decodes in one way

    def images_from(self, state: VAEState, latents: jax.Array, labels=None) -> jax.Array:
        """Images in [0, 1] decoded from `latents` (`decoded_images`)."""
        del labels  # unconditional
        return self.decoded_images(state.params, latents)

    def latents_of(self, state: VAEState, images: jax.Array, labels=None):
        """The posterior means and log-variances of `images` (input range)."""
        del labels
        return self.encode(state.params, images)

    def log_px_z(self, params, z: jax.Array, x: jax.Array) -> jax.Array:
        """log p(x|z) per example, in nats."""
        return self.likelihood.log_likelihood(self.decode(params, z), x)

    def to_unit(self, images: jax.Array) -> jax.Array:
        """Preprocessed images mapped to [0, 1], for pictures."""
        return (images - self.low) / (self.high - self.low)

    def kl_weight(self, step: jax.Array) -> jax.Array:
        """beta, ramped linearly from 0 over the first `kl_warmup_steps` steps."""
        if self.warmup_steps == 0:
            return jnp.asarray(self.beta, jnp.float32)
        return self.beta * jnp.minimum(1.0, step / self.warmup_steps)

    def elbo_terms(self, params, noise: jax.Array, x: jax.Array) -> dict[str, jax.Array]:
        """Per-example reconstruction (-log p(x|z), one z from standard normal `noise` (batch,
        latent)) and analytic KL, in nats."""
        mean, logvar = self.encode(params, x)
        z = reparameterize(noise, mean, logvar)
        recon = -self.log_px_z(params, z, x)
        return {"recon": recon, "kl": gaussian_kl(mean, logvar)}

    def iw_bound(self, params, rng: jax.Array, x: jax.Array, k: int, chunk: int) -> jax.Array:
        """Per-example importance-weighted bound with k samples, decoded `chunk` at a time. Sample
        i comes from the i-th of k keys split from `rng`: the chunk changes memory, not numbers."""
        mean, logvar = self.encode(params, x)

        def weights(keys: jax.Array) -> jax.Array:  # (keys, batch): one draw per key
            z = sample_latents(keys, mean, logvar)
            return log_weights(functools.partial(self.log_px_z, params), x, z, mean, logvar)

        keys = jax.random.split(rng, k)
        if k <= chunk:
            return iw_bound(weights(keys))
        chunks = keys.reshape(k // chunk, chunk, *keys.shape[1:])
        _, chunked = jax.lax.scan(lambda _, chunk_keys: (None, weights(chunk_keys)), None, chunks)
        return iw_bound(chunked.reshape(k, -1))

    def train_step(self, state: VAEState, batch: Batch) -> tuple[VAEState, Metrics]:
        observe_rng, sample_rng = jax.random.split(step_key(state.rng, state.step))
        x = self.likelihood.observed(observe_rng, batch["image"])
        kl_weight = self.kl_weight(state.step)
        # Noise drawn for the whole batch, examples on axis 0, so split batches draw the same.
        shape = (len(x), self.latent_dim)
        noise = jax.random.normal(sample_rng, (1, *shape))[0]
        iw_noise = None  # drawn only for the IWAE objective, which uses it
        if self.objective == "iwae":
            iw_noise = jax.random.normal(sample_rng, (self.train_samples, *shape)).swapaxes(0, 1)

        def loss_fn(params, x, noise, iw_noise):
            terms = {k: v.mean() for k, v in self.elbo_terms(params, noise, x).items()}
            if self.objective == "elbo":
                return terms["recon"] + kl_weight * terms["kl"], terms
            mean, logvar = self.encode(params, x)
            z = reparameterize(jnp.swapaxes(iw_noise, 0, 1), mean, logvar)
            log_px_z = functools.partial(self.log_px_z, params)
            return -iw_bound(log_weights(log_px_z, x, z, mean, logvar)).mean(), terms

        value_and_grad = split_value_and_grad(loss_fn, self.batch_splits)
        (loss, terms), grads = value_and_grad(state.params, x, noise, iw_noise)
        new_state = state.apply_gradients(grads, self.optimizer)
        metrics = {
            "loss": loss,
            "neg_elbo": terms["recon"] + terms["kl"],
            **terms,
            "kl_weight": kl_weight,
            "grad_norm": optax.global_norm(grads),
        }
        return new_state, metrics

    def pictures(self, state: VAEState, images: jax.Array) -> dict[str, jax.Array]:
        """Inputs above their reconstructions (`decoded_images` at the posterior mean), in rows of
        8 (as many as `images` fill), and decoded prior samples at 64 latents fixed by
        `eval_seed`."""
        prior = jax.random.normal(jax.random.PRNGKey(self.eval_seed), (64, self.latent_dim))
        samples = self.decoded_images(state.params, prior)
        layouts = {"prior_samples": samples.reshape(8, 8, *samples.shape[1:])}
        images = images[: len(images) // 8 * 8]
        if len(images):
            mean, _ = self.encode(state.params, images)
            reconstructions = self.decoded_images(state.params, mean)
            images = self.to_unit(images)
            pairs = jnp.stack([images, reconstructions]).reshape(2, -1, 8, *images.shape[1:])
            layouts["reconstructions"] = jnp.swapaxes(pairs, 0, 1).reshape(-1, 8, *images.shape[1:])
        return layouts

    def eval_step(self, state: VAEState, batch: Batch, final: bool = False) -> Metrics:
        """Sums of negative ELBO, its terms, and NLL (IW bound, `final_eval_samples` samples when
        `final`, else `eval_samples`) in nats and in bits per dimension, on a fixed binarisation
        (bernoulli): example i always draws from fold_in(key(eval_seed), i), whatever the batch
        size or device count."""
        k = self.final_eval_samples if final else self.eval_samples
        keys = example_keys(self.eval_seed, batch["index"])

        def one_example(key, image):
            observe_rng, elbo_rng, iw_rng = jax.random.split(key, 3)
            x = self.likelihood.observed(observe_rng, image[None])
            noise = jax.random.normal(elbo_rng, (1, 1, self.latent_dim))[0]
            terms = self.elbo_terms(state.params, noise, x)
            nll = -self.iw_bound(state.params, iw_rng, x, k, min(k, self.sample_chunk))
            return {"recon": terms["recon"][0], "kl": terms["kl"][0], "nll": nll[0]}

        per_example = jax.vmap(one_example)(keys, batch["image"])
        per_example["neg_elbo"] = per_example["recon"] + per_example["kl"]
        mask = batch["mask"]
        sums = {name: jnp.sum(value * mask) for name, value in per_example.items()}
        sums["bits_per_dim"] = sums["nll"] / (math.prod(batch["image"].shape[1:]) * math.log(2))
        sums["count"] = jnp.sum(mask)
        if self.scorer is None:
            return sums
        return {
            **sums,
            **self.scorer.outputs(
                batch, self.prior_images(state, batch), self.prior_samples, final
            ),
        }

    def prior_images(self, state: VAEState, batch: Batch) -> jax.Array:
        """The decoder's mean images of eval prior sample i (its latent fixed by `eval_seed`),
        in the data's pixel range: what the sample scores see."""
        keys = example_keys(self.eval_seed + 1, batch["index"])
        latents = jax.vmap(lambda key: jax.random.normal(key, (self.latent_dim,)))(keys)
        return self.low + self.decoded_images(state.params, latents) * (self.high - self.low)

    def summarize(self, outputs: list[Metrics]) -> dict[str, float]:
        """Per-example means of the test bounds; with a scorer, the prior samples' scores."""
        counted = ("recon", "kl", "nll", "neg_elbo", "bits_per_dim", "count")
        return means_and_scores(outputs, counted, self.scorer, self.prior_samples)
