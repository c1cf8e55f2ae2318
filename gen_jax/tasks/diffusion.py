"""Denoising diffusion (DDPM) and flow matching: one task, `task.objective` "ddpm" or "flow".

A step draws a time t in [0, 1) (`task.time_distribution`) and a noise per image from (seed,
step), trains the network to regress the path's target at x_t (`gaussian_paths`), and moves an
EMA of the weights, which evaluations and samples use. A class-conditional model sees "no label"
for a `label_dropout` fraction of the images, so that it is also the unconditional model of
classifier-free guidance. Evaluations report the test denoising loss at fixed times and noise,
and, with a classifier run, the samples' scores (`sample_quality.SampleScorer`) with the
sampler's network evaluations per image (`nfe`): periodic ones score `eval_samples` images drawn
in `eval_steps` steps, the final one `final_eval_samples` in `sample_steps`; the loss is over as
many test images (the first ones), which keeps a periodic evaluation's network cost to its
sampling.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gen_jax import models, optim, sample_quality
from gen_jax.errors import GenJaxError
from gen_jax.models.dit import DiT
from gen_jax.models.unet import UNet
from gen_jax.tasks import samplers
from gen_jax.tasks.base import (
    Batch,
    BatchSplits,
    Metrics,
    TrainState,
    check_image_shape,
    check_symmetric_range,
    ema_update,
    example_keys,
    means_and_scores,
    picture_latents,
    split_value_and_grad,
    step_key,
)
from gen_jax.tasks.gaussian_paths import GaussianPath, check_time_distribution, sample_times

TRAJECTORY_FRAMES = 10  # x_t shown along one sampling trajectory, noise to image


@flax.struct.dataclass
class DiffusionState(TrainState):
    """A diffusion run's state: the train state and the moving average of `params`, which
    samples."""

    ema: Any


class DiffusionTask:
    """Trains `config.model` (a U-Net or a DiT) to denoise `batch['image']` in [-1, 1]."""

    def __init__(self, config: ml_collections.ConfigDict, scorer=None):
        self.model = models.build(config.model)
        if not isinstance(self.model, UNet | DiT):
            raise GenJaxError(
                f"task 'diffusion' needs a denoising network (unet or dit), not "
                f"'{config.model.name}'"
            )
        task = config.task
        self.path = GaussianPath(task.objective, task.schedule, task.prediction)
        self.time_distribution = task.time_distribution
        self.num_classes = self.model.num_classes
        self.image_shape = tuple(self.model.image_shape)
        self.label_dropout, self.guidance_scale = task.label_dropout, task.guidance_scale
        self.ema_decay, self.clip_denoised = task.ema_decay, task.clip_denoised
        self.sampler, self.eta = task.sampler, task.eta
        self.steps = {False: task.eval_steps, True: task.sample_steps}
        self.samples = {False: task.eval_samples, True: task.final_eval_samples}
        self.eval_seed = task.eval_seed
        self.batch_splits = BatchSplits.of(config.train)
        self._check(config)
        self.optimizer = optim.build(config.optimizer, config.train.num_steps)
        self.scorer = scorer

    def _check(self, config: ml_collections.ConfigDict) -> None:
        check_time_distribution(self.time_distribution)
        for steps in self.steps.values():
            samplers.check(self.sampler, steps, self.eta)
        for key in ("eval_samples", "final_eval_samples"):
            sample_quality.check_sample_count(
                config.task.neighbours, config.task[key], f"task.{key}"
            )
        if not 0 <= self.label_dropout < 1:
            raise GenJaxError(f"task.label_dropout {self.label_dropout} must be in [0, 1)")
        self._check_guidance(self.guidance_scale)
        check_symmetric_range(config, "diffusion's")

    def evaluations(self, steps: int, sampler: str | None = None) -> int:
        """Network evaluations per sample (NFE) of `sampler` (default task.sampler) in `steps`:
        a guided step evaluates the network twice, with the label and without."""
        guided = self.num_classes and self.guidance_scale != 1
        return samplers.evaluations(sampler or self.sampler, steps) * (2 if guided else 1)

    def _check_guidance(self, scale: float) -> None:
        if scale != 1 and not (self.num_classes and self.label_dropout > 0):
            raise GenJaxError(
                f"a guidance scale of {scale} (task.guidance_scale, or guidance_scale=) needs a "
                "class-conditional model trained with label dropout (model.num_classes > 0, "
                "task.label_dropout > 0); use 1"
            )

    # ------------------------------------------------------------------ the network
    def predict(
        self, params, x: jax.Array, t: jax.Array, labels: jax.Array | None, guidance_scale=None
    ) -> jax.Array:
        """The network's output at x_t for times t (B,), guided when the guidance scale
        (default task.guidance_scale) is not 1: unconditional + scale * (conditional -
        unconditional), in one batch of both."""
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        if not self.num_classes or scale == 1:
            return self.model.apply({"params": params}, x, t, labels)
        no_label = jnp.full_like(labels, self.num_classes)
        both = self.model.apply(
            {"params": params},
            jnp.concatenate([x, x]),
            jnp.concatenate([t, t]),
            jnp.concatenate([labels, no_label]),
        )
        conditional, unconditional = jnp.split(both, 2)
        return unconditional + scale * (conditional - unconditional)

    def denoiser(self, params, labels: jax.Array | None, guidance_scale=None) -> samplers.Denoiser:
        """(x_t, scalar t) -> estimates of (x_0, noise), x_0 clipped to [-1, 1] with
        `clip_denoised` (and the noise estimate made consistent with it)."""

        def denoise(x, t):
            times = jnp.full((x.shape[0],), t)
            output = self.predict(params, x, times, labels, guidance_scale)
            x0, noise = self.path.denoised(output, x, times)
            if not self.clip_denoised:
                return x0, noise
            a, s = self.path.coefficients(t)
            x0 = jnp.clip(x0, -1.0, 1.0)
            return x0, (x - a * x0) / s

        return denoise

    def generate(
        self,
        params,
        noise: jax.Array,
        labels: jax.Array | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        rng: jax.Array | None = None,
        record: bool = False,
        guidance_scale: float | None = None,
    ):
        """Images in [-1, 1] from `noise` (B, H, W, C) by `sampler` (default task.sampler) in
        `steps` (default task.sample_steps) at `guidance_scale` (default task.guidance_scale);
        `rng` draws a stochastic sampler's fresh noise."""
        sampler, steps = sampler or self.sampler, steps or self.steps[True]
        samplers.check(sampler, steps, self.eta)  # before tracing: a named setting, not a trace
        if guidance_scale is not None:
            self._check_guidance(guidance_scale)
        if rng is None:
            rng = jax.random.PRNGKey(self.eval_seed)
        denoise = self.denoiser(params, labels, guidance_scale)
        return samplers.sample(sampler, denoise, self.path, noise, steps, self.eta, rng, record)

    def invert(self, params, images: jax.Array, labels=None, steps: int | None = None):
        """The noise that deterministic DDIM decodes into `images` (DDIM inversion)."""
        denoise = self.denoiser(params, labels)
        return samplers.ddim_invert(denoise, self.path, images, steps or self.steps[True])

    # ------------------------------------------------------------------ what Run asks
    sampling_options = ("steps", "sampler", "guidance_scale")  # keywords of `generate`

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.image_shape  # the noise is image-shaped

    def images_from(self, state: DiffusionState, noise: jax.Array, labels=None, **sampling):
        """The EMA model's samples from `noise` (`generate`), mapped to [0, 1]."""
        return (self.generate(state.ema, noise, labels, **sampling) + 1.0) / 2.0

    def latents_of(self, state: DiffusionState, images: jax.Array, labels=None, steps=None):
        """The noise that deterministic DDIM decodes into `images` (`invert`, EMA model)."""
        return self.invert(state.ema, images, labels, steps)

    def path_from(self, state: DiffusionState, noise: jax.Array, labels=None, **sampling):
        """Every x_t that `generate` visits from `noise`, (steps + 1, B, H, W, C), in [0, 1]
        (clipped: for pictures)."""
        _, visited = self.generate(state.ema, noise, labels, record=True, **sampling)
        return jnp.clip((visited + 1.0) / 2.0, 0.0, 1.0)

    # ------------------------------------------------------------------ training
    def init(self, rng: jax.Array, batch: Batch) -> DiffusionState:
        params_rng, run_rng = jax.random.split(rng)
        check_image_shape(
            self.image_shape,
            batch["image"],
            "the U-Net takes",
            "set config.model.image_shape to the data's (or leave it unset)",
        )
        images = batch["image"]
        times = jnp.zeros((images.shape[0],))
        labels = jnp.zeros((images.shape[0],), jnp.int32) if self.num_classes else None
        params = self.model.init(params_rng, images, times, labels)["params"]
        return DiffusionState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.optimizer.init(params),
            ema=params,
            rng=run_rng,
        )

    def _draws(self, rng: jax.Array, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """A time in [0, 1) and a standard-normal noise per image, from one key."""
        time_rng, noise_rng = jax.random.split(rng)
        times = sample_times(time_rng, images.shape[0], self.time_distribution)
        return times, jax.random.normal(noise_rng, images.shape)

    def loss(self, params, x0: jax.Array, noise, times, labels=None, dropout=None) -> jax.Array:
        """The mean squared error between the network's output at x_t and the path's target;
        with a `dropout` key, the network in training mode (its dropout on)."""
        output = self.model.apply(
            {"params": params},
            self.path.noised(x0, noise, times),
            times,
            labels,
            train=dropout is not None,
            rngs=None if dropout is None else {"dropout": dropout},
        )
        error = (output - self.path.target(x0, noise, times)) ** 2
        return jnp.mean(error.reshape(error.shape[0], -1), axis=-1)

    def train_step(self, state: DiffusionState, batch: Batch) -> tuple[DiffusionState, Metrics]:
        key = step_key(state.rng, state.step)
        draw_rng, label_rng = jax.random.split(key)
        images = batch["image"]
        times, noise = self._draws(draw_rng, images)
        inputs = [images, noise, times]
        if self.num_classes:
            dropped = jax.random.bernoulli(label_rng, self.label_dropout, batch["label"].shape)
            inputs.append(jnp.where(dropped, self.num_classes, batch["label"]))

        dropout = jax.random.fold_in(key, 1)  # beside the split: the draws stay as they were

        def loss_fn(params, x0, noise, times, labels=None, rng=None):
            return jnp.mean(self.loss(params, x0, noise, times, labels, dropout=rng)), ()

        value_and_grad = split_value_and_grad(loss_fn, self.batch_splits)
        (loss, _), grads = value_and_grad(state.params, *inputs, rng=dropout)
        new_state = state.apply_gradients(grads, self.optimizer)
        ema = ema_update(state.ema, new_state.params, self.ema_decay, state.step)
        new_state = new_state.replace(ema=ema)
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    # ------------------------------------------------------------------ evaluation
    def eval_noise(self, index: jax.Array) -> jax.Array:
        """The starting noise of eval sample i, fixed by `eval_seed` (any batch, any devices)."""
        keys = example_keys(self.eval_seed, index)
        return jax.vmap(lambda key: jax.random.normal(key, self.image_shape))(keys)

    def eval_labels(self, index: jax.Array) -> jax.Array | None:
        """Balanced classes for a conditional model's eval samples."""
        return index % self.num_classes if self.num_classes else None

    def _sample_eval(self, state: DiffusionState, index: jax.Array, steps: int) -> jax.Array:
        """Eval samples `index` from their fixed noise (and labels)."""
        rng = jax.random.fold_in(jax.random.PRNGKey(self.eval_seed), index[0])
        noise, labels = self.eval_noise(index), self.eval_labels(index)
        return self.generate(state.ema, noise, labels, steps, rng=rng)

    def eval_step(self, state: DiffusionState, batch: Batch, final: bool = False) -> Metrics:
        """Sums of the EMA network's test loss (a time and a noise fixed per example) and the
        samples' classifier features, over the first `samples` eval indices (with or without a
        classifier), so that periodic and final losses cover different sets. A batch with none
        of them skips the U-Net; the classifier still scores its real images (the real
        statistics span the whole split)."""
        index, mask, images = batch["index"], batch["mask"], batch["image"]
        samples, steps = self.samples[final], self.steps[final]
        counted = mask * (index < samples)
        labels = batch["label"] if self.num_classes else None

        def denoising_loss():
            def draw(key):
                time_key, noise_key = jax.random.split(key)
                times = jax.random.uniform(time_key)
                return times, jax.random.normal(noise_key, self.image_shape)

            times, noise = jax.vmap(draw)(example_keys(self.eval_seed + 1, index))
            return jnp.sum(self.loss(state.ema, images, noise, times, labels) * counted)

        def network_outputs():
            fake = self._sample_eval(state, index, steps) if self.scorer else None
            return denoising_loss(), fake

        def skipped():
            return jnp.zeros(()), jnp.zeros_like(images) if self.scorer else None

        loss, fake = jax.lax.cond(jnp.any(counted > 0), network_outputs, skipped)
        sums = {"loss": loss, "count": jnp.sum(counted)}
        if self.scorer is None:
            return sums
        outputs = self.scorer.outputs(batch, fake, samples, final)
        return {**sums, **outputs, "nfe": self.evaluations(steps), "samples": samples}

    def summarize(self, outputs: list[Metrics]) -> dict[str, float]:
        """The test loss, and with a classifier the samples' scores and their NFE per image."""
        counted = ("loss", "count")
        if self.scorer is None:
            return means_and_scores(outputs, counted, None, 0)
        samples, nfe = int(outputs[0]["samples"]), int(outputs[0]["nfe"])
        ignored = ("nfe", "samples")
        return {
            **means_and_scores(outputs, counted, self.scorer, samples, ignored),
            "nfe": float(nfe),
        }

    def pictures(self, state: DiffusionState, images: jax.Array) -> dict[str, jax.Array]:
        """Samples at fixed noise (8x8, or one row per class) and one sampling trajectory, x_t at
        `TRAJECTORY_FRAMES` times from noise to image, all by the final evaluation's sampler."""
        del images
        rows, columns, index, labels = picture_latents(self.num_classes)
        samples = jnp.clip(self.images_from(state, self.eval_noise(index), labels), 0.0, 1.0)
        first = None if labels is None else labels[:1]
        path = self.path_from(state, self.eval_noise(index[:1]), first)
        frames = np.linspace(0, self.steps[True], TRAJECTORY_FRAMES).round().astype(int)
        return {
            "samples": samples.reshape(rows, columns, *self.image_shape),
            "trajectory": path[frames, 0][None],
        }
