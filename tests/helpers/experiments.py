"""Tiny experiments of every family, as config objects (`tiny_config`) or as experiment files
for tests that run the CLI on a file (`write_experiment`), and the settings of real-data runs."""

from __future__ import annotations

import functools
from pathlib import Path

import ml_collections

from gen_jax import recipes

COMMON_SETTINGS = {
    "data.batch_size": 16,
    "data.eval_batch_size": 64,
    "train.num_steps": 10,
    "train.log_every": 1,
    "train.checkpoint_every": 5,
    "train.keep_checkpoints": 100,
}
OPTIMIZER = {"name": "adam", "learning_rate": 1e-3, "schedule": "cosine", "warmup_steps": 2}


def _optimizer_settings(*sections: str) -> dict:
    return {f"{section}.{k}": v for section in sections for k, v in OPTIMIZER.items()}


FAMILIES = {  # recipe function, settings: tiny versions that exercise every source of randomness
    "classifier": (
        "base_config",
        {
            "model.name": "bn_cnn",  # batch norm and dropout
            "model.features": (8, 16),
            "model.pool_after": (0, 1),
            "model.hidden": 32,
            "model.dropout_rate": 0.25,
            "task.label_smoothing": 0.1,
            "task.max_shift": 2,
            **_optimizer_settings("optimizer"),
        },
    ),
    "vae": (
        "vae_config",
        {
            "model.name": "mlp_vae",
            "model.latent_dim": 4,
            "model.hidden": 32,
            "task.kl_warmup_steps": 5,
            "task.eval_samples": 4,
            "task.final_eval_samples": 8,
            "task.eval_sample_chunk": 4,
            **_optimizer_settings("optimizer"),
        },
    ),
    "gan": (
        "gan_config",
        {
            "model.noise_dim": 8,
            "model.generator_features": (16, 8, 4),
            "model.discriminator_features": (8, 16),
            "task.eval_samples": 64,
            **_optimizer_settings("optimizer.generator", "optimizer.discriminator"),
        },
    ),
}
TINY_UNET = {  # one halving, one block per level: the cheapest U-Net to compile and run
    "model.features": 8,
    "model.channel_multipliers": (1, 2),
    "model.blocks_per_level": 1,
    "model.groups": 4,
}
FAMILIES["diffusion"] = (  # conditional with label dropout and guidance: every random draw
    "diffusion_config",
    {
        **TINY_UNET,
        "model.num_classes": 10,
        "task.guidance_scale": 2.0,
        "task.sampler": "ddpm",  # stochastic: its fresh noise too
        "task.eval_samples": 32,
        "task.final_eval_samples": 64,
        "task.eval_steps": 2,
        "task.sample_steps": 3,
        **_optimizer_settings("optimizer"),
    },
)
FAMILIES["wgan_gp"] = (
    "gan_config",
    {
        **FAMILIES["gan"][1],
        "model.num_classes": 10,
        "model.discriminator_norm": "layer",
        "task.loss": "wasserstein",
        "task.gradient_penalty": 10.0,
        "task.critic_steps": 2,
    },
)
FAMILIES["r1_gan"] = (  # the DCGAN recipe: no norm in the discriminator, an R1 penalty
    "gan_config",
    {**FAMILIES["gan"][1], "model.discriminator_norm": "none", "task.r1_penalty": 1.0},
)
DEVICE_RUN_FAMILIES = ["classifier", "vae", "gan", "wgan_gp", "r1_gan", "diffusion"]
SCORED_FAMILIES = ["gan", "wgan_gp", "r1_gan", "diffusion"]  # in the classifier run's features


def _settings(family: str, overrides: dict) -> dict:
    """The dotted keys a tiny experiment of `family` sets, in the order it sets them."""
    return {**COMMON_SETTINGS, **FAMILIES[family][1], **overrides}


def tiny_config(family: str = "classifier", **overrides) -> ml_collections.ConfigDict:
    """A tiny experiment of a task family, for mocked data: its recipe with FAMILIES' settings and
    `overrides` (dotted keys) set; the config of `write_experiment`'s file."""
    recipe, _ = FAMILIES[family]
    config = getattr(recipes, recipe)()
    for key, value in _settings(family, overrides).items():
        *sections, name = key.split(".")
        setattr(functools.reduce(getattr, sections, config), name, value)
    return config


def write_experiment(path: Path, family: str = "classifier", **overrides) -> Path:
    """An experiment file whose `get_config()` is `tiny_config(family, **overrides)`."""
    recipe, _ = FAMILIES[family]
    settings = _settings(family, overrides)
    lines = "\n".join(f"    config.{k} = {v!r}" for k, v in settings.items())
    path.write_text(
        f"from gen_jax.recipes import {recipe}\n\n\n"
        f"def get_config():\n    config = {recipe}()\n{lines}\n    return config\n"
    )
    return path


QUICK_FAMILIES = ["mnist_cnn", "mnist_vae_mlp", "mnist_dcgan"]  # one experiment per family
REAL_DIFFUSION = [  # experiments/mnist_cflow.py with the tiny U-Net, 200 steps on the real MNIST
    *(f"--config.{key}={value}" for key, value in TINY_UNET.items()),
    "--config.train.num_steps=200",
    "--config.optimizer.learning_rate=0.002",
    "--config.optimizer.warmup_steps=20",
    "--config.data.batch_size=32",
    "--config.task.final_eval_samples=500",
    "--config.task.sampler=euler",  # one network evaluation per step, unguided: cheap to sample
    "--config.task.sample_steps=8",
    "--config.task.guidance_scale=1.0",
    "--config.task.inception_samples=0",  # the file's 10k Inception-v3 samples: hours here
]
