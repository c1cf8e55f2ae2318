"""Generative adversarial networks: both players updated inside one compiled step.

Losses: non-saturating (binary cross-entropy), hinge, or Wasserstein with a gradient penalty;
optionally an R1 penalty on the real images. Each step makes `critic_steps` discriminator
updates, each on its own slice of the batch and with its own key, then one generator update. The
state keeps an exponential moving average (EMA) of the generator, which evaluations and samples
use. Evaluation scores `eval_samples` generated images in the feature space of a trained
classifier run (`gen_jax.sample_quality`).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gen_jax import models, optim, sample_quality
from gen_jax.errors import GenJaxError
from gen_jax.models.dcgan import GANModels
from gen_jax.tasks.base import (
    Batch,
    Metrics,
    check_image_shape,
    check_symmetric_range,
    ema_update,
    example_keys,
    optimizer_step,
    picture_latents,
    step_key,
)
from gen_jax.tasks.gan_losses import (
    LOSSES,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)


# ----------------------------------------------------------------------------- the state
@flax.struct.dataclass
class Player:
    """One network's weights, batch statistics and optimizer state."""

    params: Any
    batch_stats: Any
    opt_state: Any

    def apply_gradients(self, grads: Any, optimizer, batch_stats: Any) -> Player:
        """The player after `optimizer`'s update by `grads`, with new batch statistics."""
        params, opt_state = optimizer_step(self.params, self.opt_state, grads, optimizer)
        return Player(params, batch_stats, opt_state)


@flax.struct.dataclass
class GANState:
    """Everything a GAN run carries from step to step."""

    step: jax.Array
    generator: Player
    discriminator: Player
    ema: Any  # {"params", "batch_stats"}: the generator's moving average
    rng: jax.Array


# ----------------------------------------------------------------------------- the task
class GANTask:
    """Trains `config.model` (a generator and a discriminator) on `batch['image']` in [-1, 1]."""

    def __init__(self, config: ml_collections.ConfigDict, scorer=None):
        pair = models.build(config.model)
        if not isinstance(pair, GANModels):
            raise GenJaxError(
                f"task 'gan' needs a GAN model (e.g. dcgan), not '{config.model.name}'"
            )
        self.generator, self.discriminator = pair.generator, pair.discriminator
        self.noise_dim, self.num_classes = pair.noise_dim, pair.num_classes
        self.latent_shape = (self.noise_dim,)
        if config.train.batch_splits != 1:
            raise GenJaxError(
                f"train.batch_splits={config.train.batch_splits}: a GAN step cannot split its "
                "batch (batch norm and the critic updates need whole batches); set it to 1"
            )
        task = config.task
        self.loss, self.critic_steps, self.penalty = (
            task.loss,
            task.critic_steps,
            task.gradient_penalty,
        )
        self.r1 = task.r1_penalty
        self.eval_samples, self.eval_seed = task.eval_samples, task.eval_seed
        self._check(config)
        self.ema_decay = task.ema_decay
        self.optimizers = {
            name: optim.build(config.optimizer[name], config.train.num_steps)
            for name in ("generator", "discriminator")
        }
        self.scorer = scorer

    def _check(self, config: ml_collections.ConfigDict) -> None:
        if self.loss not in LOSSES:
            raise GenJaxError(f"unknown task.loss '{self.loss}'; use one of {LOSSES}")
        if self.loss == "wasserstein" and self.penalty <= 0:
            raise GenJaxError("task.loss 'wasserstein' needs task.gradient_penalty > 0 (e.g. 10)")
        if (self.penalty > 0 or self.r1 > 0) and self.discriminator.norm == "batch":
            raise GenJaxError(
                "a gradient penalty is per example, and batch norm couples the examples: set "
                "model.discriminator_norm to 'layer' or 'none'"
            )
        if self.critic_steps < 1 or config.data.batch_size % self.critic_steps:
            raise GenJaxError(
                f"data.batch_size {config.data.batch_size} must be a multiple of "
                f"task.critic_steps {self.critic_steps} (>= 1): each critic step takes a slice"
            )
        sample_quality.check_sample_count(
            config.task.neighbours, self.eval_samples, "task.eval_samples"
        )
        check_symmetric_range(config, "a GAN's")

    # ------------------------------------------------------------------ the two networks
    def _generate(self, variables: dict, noise, labels, train: bool):
        """Images and (in training) the generator's updated batch statistics."""
        if not train:
            return self.generator.apply(variables, noise, labels), variables["batch_stats"]
        images, updates = self.generator.apply(
            variables, noise, labels, train=True, mutable=["batch_stats"]
        )
        return images, updates["batch_stats"]

    def _discriminate(self, params, batch_stats, images, labels):
        """Scores (B,) and the discriminator's updated batch statistics (training mode)."""
        scores, updates = self.discriminator.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            labels,
            train=True,
            mutable=["batch_stats"],
        )
        return scores, updates.get("batch_stats", {})

    def _latents(self, rng: jax.Array, count: int):
        noise_rng, label_rng = jax.random.split(rng)
        noise = jax.random.normal(noise_rng, (count, self.noise_dim))
        labels = (
            jax.random.randint(label_rng, (count,), 0, self.num_classes)
            if self.num_classes
            else None
        )
        return noise, labels

    def init(self, rng: jax.Array, batch: Batch) -> GANState:
        g_rng, d_rng, run_rng = jax.random.split(rng, 3)
        noise, labels = self._latents(g_rng, batch["image"].shape[0])
        g_vars = self.generator.init(g_rng, noise, labels)
        made = jax.eval_shape(self.generator.apply, g_vars, noise, labels).shape[1:]
        check_image_shape(
            made,
            batch["image"],
            "the generator makes",
            "set model.image_size and model.channels to the data's",
        )
        d_vars = self.discriminator.init(d_rng, batch["image"], labels)
        players = {}
        for name, variables in (("generator", g_vars), ("discriminator", d_vars)):
            params = variables["params"]
            players[name] = Player(
                params, variables.get("batch_stats", {}), self.optimizers[name].init(params)
            )
        return GANState(
            step=jnp.zeros((), jnp.int32),
            ema={"params": g_vars["params"], "batch_stats": g_vars.get("batch_stats", {})},
            rng=run_rng,
            **players,
        )

    # ------------------------------------------------------------------ training
    def critic_updates(self, state: GANState, images, labels, rng) -> tuple[Player, Metrics]:
        """`critic_steps` discriminator updates, step i on rows i, i + n, i + 2n, ... of the batch
        (a strided split keeps every device's rows on that device) with the i-th key of `rng`.
        Metrics have one entry per critic step."""
        n = self.critic_steps
        split = lambda x: None if x is None else jnp.swapaxes(x.reshape(-1, n, *x.shape[1:]), 0, 1)
        generator = {"params": state.generator.params, "batch_stats": state.generator.batch_stats}

        def one_update(player: Player, inputs):
            rng, real, real_labels = inputs
            noise_rng, penalty_rng = jax.random.split(rng)
            noise, _ = self._latents(noise_rng, real.shape[0])
            fake, _ = self._generate(generator, noise, real_labels, train=True)

            def loss_fn(params):
                real_scores, stats = self._discriminate(
                    params, player.batch_stats, real, real_labels
                )
                fake_scores, stats = self._discriminate(params, stats, fake, real_labels)
                loss = discriminator_loss(self.loss, real_scores, fake_scores)
                critic = lambda x: self._discriminate(params, stats, x, real_labels)[0]
                penalty = r1 = jnp.zeros(())
                if self.penalty > 0:
                    penalty = gradient_penalty(critic, real, fake, penalty_rng)
                if self.r1 > 0:
                    r1 = r1_penalty(critic, real)
                metrics = {
                    "d_loss": loss,
                    "gradient_penalty": penalty,
                    "r1_penalty": r1,
                    "real_score": jnp.mean(real_scores),
                    "fake_score": jnp.mean(fake_scores),
                }
                return loss + self.penalty * penalty + self.r1 * r1, (stats, metrics)

            grads, (stats, metrics) = jax.grad(loss_fn, has_aux=True)(player.params)
            new = player.apply_gradients(grads, self.optimizers["discriminator"], stats)
            return new, {**metrics, "d_grad_norm": optax.global_norm(grads)}

        # A Python loop, unrolled at trace time: XLA's CPU backend runs convolutions inside a
        # `lax.scan` loop body ~10x slower (benchmarks/README.md), and n is small.
        player, per_step = state.discriminator, []
        chunks = (jax.random.split(rng, n), split(images), split(labels))
        for i in range(n):
            player, metrics = one_update(player, jax.tree.map(lambda x, i=i: x[i], chunks))
            per_step.append(metrics)
        return player, jax.tree.map(lambda *values: jnp.stack(values), *per_step)

    def generator_update(self, state: GANState, rng, count: int) -> tuple[Player, Any, Metrics]:
        """One generator update against the current discriminator; the EMA follows it."""
        player, critic = state.generator, state.discriminator
        noise, labels = self._latents(rng, count)

        def loss_fn(params):
            variables = {"params": params, "batch_stats": player.batch_stats}
            fake, stats = self._generate(variables, noise, labels, train=True)
            scores, _ = self._discriminate(critic.params, critic.batch_stats, fake, labels)
            return generator_loss(self.loss, scores), stats

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(player.params)
        new = player.apply_gradients(grads, self.optimizers["generator"], stats)
        weights = {"params": new.params, "batch_stats": new.batch_stats}
        ema = ema_update(state.ema, weights, self.ema_decay, state.step)
        return new, ema, {"g_loss": loss, "g_grad_norm": optax.global_norm(grads)}

    def train_step(self, state: GANState, batch: Batch) -> tuple[GANState, Metrics]:
        critic_rng, generator_rng = jax.random.split(step_key(state.rng, state.step))
        labels = batch["label"] if self.num_classes else None
        critic, critic_metrics = self.critic_updates(state, batch["image"], labels, critic_rng)
        state = state.replace(discriminator=critic)
        count = batch["image"].shape[0] // self.critic_steps
        generator, ema, metrics = self.generator_update(state, generator_rng, count)
        metrics.update({k: jnp.mean(v) for k, v in critic_metrics.items()})
        # what the two players minimise, penalties included: non-finite if any part is
        critic_objective = (
            metrics["d_loss"]
            + self.penalty * metrics["gradient_penalty"]
            + self.r1 * metrics["r1_penalty"]
        )
        metrics["loss"] = critic_objective + metrics["g_loss"]
        new_state = state.replace(step=state.step + 1, generator=generator, ema=ema)
        return new_state, metrics

    # ------------------------------------------------------------------ evaluation
    def sample(self, state: GANState, noise, labels=None) -> jax.Array:
        """Images in [-1, 1] from the EMA generator in inference mode."""
        return self._generate(state.ema, noise, labels, train=False)[0]

    sampling_options = ()  # a GAN generates in one way

    def images_from(self, state: GANState, noise: jax.Array, labels=None) -> jax.Array:
        """`sample`'s images mapped to [0, 1]."""
        return (self.sample(state, noise, labels) + 1.0) / 2.0

    def eval_latents(self, index: jax.Array):
        """Noise (and balanced labels) for eval examples `index`: fixed by `eval_seed`."""
        keys = example_keys(self.eval_seed, index)
        noise = jax.vmap(lambda k: jax.random.normal(k, (self.noise_dim,)))(keys)
        return noise, (index % self.num_classes if self.num_classes else None)

    def eval_step(self, state: GANState, batch: Batch, final: bool = False) -> Metrics:
        """Per-example classifier features and probabilities of the real images and of as many
        generated ones (sample i from `eval_latents(i)`), and in a final evaluation the samples
        to score in Inception's features; masks say which rows count."""
        if self.scorer is None:
            return {"mask": batch["mask"]}
        fake = self.sample(state, *self.eval_latents(batch["index"]))
        return self.scorer.outputs(batch, fake, self.eval_samples, final)

    def summarize(self, outputs: list[Metrics]) -> dict[str, float]:
        """The generated set's scores (`sample_quality.SampleScorer`); none without a classifier."""
        return self.scorer.summarize(outputs, self.eval_samples) if self.scorer else {}

    def pictures(self, state: GANState, images: jax.Array) -> dict[str, jax.Array]:
        """Samples at fixed noise: 8x8, or for a cGAN one row per class."""
        del images
        rows, columns, index, labels = picture_latents(self.num_classes)
        samples = self.images_from(state, self.eval_latents(index)[0], labels)
        return {"samples": samples.reshape(rows, columns, *samples.shape[1:])}
