"""The default recipes that experiment files start from, one per model family, and the overrides
shared by `gen-jax reproduce --quick` runs: experiments import them from here, as the Flax
examples' and score_sde's config files import theirs.

`base_config()` names every key the training path reads; each family's recipe changes the
`task`, `model` and `optimizer` sections it needs. `gen_jax.config` re-exports these names.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Every key the training path reads, with defaults; experiments start from this."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = ml_collections.ConfigDict(
        {
            "name": "classifier",
            "label_smoothing": 0.0,
            "max_shift": 0,  # random shifts of up to this many pixels
            "test_flips": False,  # evaluate each image and its mirror image (horizontal flip)
            "test_shift": 0,  # and, if > 0, its two diagonal translations by this many pixels
        }
    )
    config.model = ml_collections.ConfigDict({"name": "cnn"})
    config.data = ml_collections.ConfigDict(
        {
            "name": "mnist",  # a TFDS dataset prepared as array_record, or ...
            "data_dir": "",  # its directory; empty: $TFDS_DATA_DIR
            # ... where none is prepared ("auto") or always ("download"): MNIST, Fashion-MNIST or
            # CIFAR-10 from their canonical files, downloaded once into cache_dir; "tfds": never
            "source": "auto",
            "mirrors": (),  # base URLs to download from; empty: $GEN_JAX_DATA_MIRRORS, else the
            # canonical hosts (gen_jax/data/canonical.py)
            "folder": "",  # an image folder root/<split>/[<class>/]*.{png,jpg,jpeg} instead
            "image_size": 0,  # >0: resize the shorter side, then centre-crop to this square
            "channels": 0,  # >0: convert every image to 1 (gray) or 3 (color) channels
            "skip_unreadable": False,  # train without a folder's unreadable images (logged)
            "cache_dir": "",  # decoded folders and downloads; empty: ~/.cache/gen_jax
            "train_split": "train",
            "eval_split": "test",
            # 0: all; >0 keeps N of each split (quick runs): TFDS's first N, a folder's
            # class-stratified random N (the same every run)
            "max_examples": 0,
            "batch_size": 128,
            "eval_batch_size": 1000,
            "preprocess": ("scale_to_unit",),  # named steps, gen_jax/data/preprocess.py
            "mean": (),  # per channel, in [0, 1] units: the "normalize" step's
            "std": (),
            "crop_padding": 4,  # the "random_crop" step's padding, in pixels a side ...
            "crop_mode": "zeros",  # ... of zeros, or "reflect": the image's pixels mirrored
            # a training split of more decoded bytes (or any, with `streaming`) is read from
            # disk by index through grain's `workers` processes instead of held in memory
            "memory_budget": 2 * 2**30,
            "streaming": False,
            "workers": 2,
            # the training split in device memory, batches gathered in the compiled step (the
            # same batches as on the host); False for a dataset larger than device memory
            "on_device": True,
        }
    )
    config.optimizer = ml_collections.ConfigDict(
        {
            "name": "sgd",
            "learning_rate": 0.1,
            "momentum": 0.9,  # sgd
            "nesterov": False,  # sgd
            "b1": 0.9,  # adam, adamw
            "b2": 0.999,
            "weight_decay": 0.0,  # adamw: decoupled; sgd: L2, added to the gradient
            "bias_lr_scale": 1.0,  # batch norm biases: this multiple of the rate (decay / it)
            "lookahead_every": 0,  # steps between lookahead's syncs (optim.lookahead); 0: off
            "lookahead_decay": 0.95**5,  # the slow weights' final decay per sync (airbench's)
            "freeze": "",  # a parameter name (last key): trained for the first freeze_at steps
            "freeze_at": 0,  # only, then held (airbench's whitening bias: 3 epochs)
            "schedule": "constant",  # or "cosine", "linear": decay to end_fraction at the end
            "warmup_steps": 0,
            "warmup_from": 0.0,  # the warm-up starts at this fraction of the peak rate
            "end_fraction": 0.0,  # cosine and linear decay to this fraction of the peak rate
            "decay_fraction": 1.0,  # the decay spans this last fraction of the steps after warm-up
            "clip_norm": 0.0,  # > 0: gradients clipped to this global norm first (DDPM: 1)
        }
    )
    config.train = ml_collections.ConfigDict(
        {
            "num_steps": 1000,
            # > 0: train this many epochs instead, each (train examples // batch size) steps;
            # num_steps becomes epochs x that, rounded up (an override of num_steps turns it off)
            "num_epochs": 0.0,
            "log_every": 100,  # each of these three: 0 for only at the end
            "eval_every": 0,
            "checkpoint_every": 1000,
            "keep_checkpoints": 3,
            # Speed only (benchmarks/README.md); both give the same numbers up to float rounding.
            "batch_splits": 1,  # gradients of this many slices of each batch, run concurrently
            "steps_per_call": 1,  # train steps per compiled call (a lax.scan over the batches)
            # Memory: the batch_splits slices one after another (gradient accumulation over
            # micro-batches; one slice's activations in memory at a time), not concurrently
            "accumulate_gradients": False,
        }
    )
    config.mesh = ml_collections.ConfigDict(  # the devices' layout: gen_jax/parallel.py
        {
            "data": -1,  # -1: the devices that mesh.fsdp leaves
            "fsdp": 1,  # > 1: split each large state leaf this many ways (FSDP); 1: replicate
            "fsdp_min_size": 2**16,  # values; smaller leaves stay replicated (latency > memory)
            # (regex, "fsdp" | "replicated") searched in each state leaf's name ("params/
            # Conv_0/kernel", "opt_state/..."), the first match decides
            "rules": ((".*", "fsdp"),),
        }
    )
    return config


def vae_config() -> ml_collections.ConfigDict:
    """`base_config()` set up for a VAE on dynamically binarised MNIST (conv, 32-d latent)."""
    config = base_config()
    config.task = ml_collections.ConfigDict(
        {
            "name": "vae",
            "likelihood": "bernoulli",  # or "logistic": 256-level discretized logistic, unbinarised
            "objective": "elbo",  # or "iwae": the importance-weighted bound
            "train_samples": 1,  # k of the IWAE objective
            "beta": 1.0,  # weight of the KL term (beta-VAE); applies to the "elbo" objective
            "kl_warmup_steps": 0,  # beta ramps linearly from 0 over these steps
            "eval_samples": 100,  # importance samples for the NLL of periodic evaluations
            "final_eval_samples": 1000,  # ... and of the final one (the reported number)
            "eval_sample_chunk": 50,  # decoded at once (memory: chunk x eval batch), same NLL
            "eval_seed": 0,  # fixes the test binarisation and the evaluation samples
            "classifier_workdir": "",  # a finished classifier run: prior samples' FID, IS, P/R
            "prior_samples": 10_000,  # prior samples scored (decoder means; <= eval split size)
            "inception_samples": 0,  # > 0: the final evaluation's Inception-v3 FID, KID, P/R
            "inception_reference": 0,  # train images of its reference statistics (0: all)
            "neighbours": 3,  # k of the k-NN manifolds of precision and recall
        }
    )
    config.model = ml_collections.ConfigDict({"name": "conv_vae", "latent_dim": 32, "hidden": 256})
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.data.eval_batch_size = 200
    return config


def gan_config() -> ml_collections.ConfigDict:
    """`base_config()` set up for a DCGAN on MNIST in [-1, 1]: non-saturating loss, Adam
    (2e-4, b1 0.5) for each player, an EMA generator."""
    config = base_config()
    config.task = ml_collections.ConfigDict(
        {
            "name": "gan",
            "loss": "non_saturating",  # or "hinge", "wasserstein"
            "critic_steps": 1,  # discriminator updates per generator update
            "gradient_penalty": 0.0,  # weight of the WGAN-GP penalty (> 0 for "wasserstein")
            "r1_penalty": 0.0,  # weight of the R1 penalty, mean |grad_x D(real)|^2
            "ema_decay": 0.999,
            "classifier_workdir": "",  # a finished classifier run: FID, IS, precision, recall
            "inception_samples": 0,  # > 0: the final evaluation's Inception-v3 FID, KID, P/R
            "inception_reference": 0,  # train images of its reference statistics (0: all)
            "eval_samples": 10_000,  # generated images per evaluation (<= eval split size)
            "neighbours": 3,  # k of the k-NN manifolds of precision and recall
            "eval_seed": 0,  # fixes the evaluation noise and the picture noise
        }
    )
    config.model = ml_collections.ConfigDict({"name": "dcgan", "noise_dim": 64, "num_classes": 0})
    config.data.preprocess = ("scale_to_symmetric",)
    config.data.eval_batch_size = 500
    adam = config.optimizer.to_dict() | {"name": "adam", "learning_rate": 2e-4, "b1": 0.5}
    config.optimizer = ml_collections.ConfigDict(
        {"generator": dict(adam), "discriminator": dict(adam)}
    )
    return config


def r1_dcgan_config(epoch: int) -> ml_collections.ConfigDict:
    """`gan_config()` with the R1 recipe of experiments/mnist_dcgan.py: a discriminator without
    normalisation (R1 is per example) that downsamples by space_to_depth, R1 weight 1, batch 64,
    Adam 5e-4 for each player decayed linearly to zero over the last 40% of training; evaluation
    and checkpoint periods count in `epoch` steps, which the experiment sets."""
    config = gan_config()
    config.model.discriminator_norm = "none"
    config.model.downsampling = "space_to_depth"  # R1 differentiates D twice: 1.75x faster
    config.task.r1_penalty = 1.0
    config.data.batch_size = 64
    for player in ("generator", "discriminator"):
        config.optimizer[player].learning_rate = 5e-4
        config.optimizer[player].schedule = "linear"
        config.optimizer[player].decay_fraction = 0.4
    config.train.eval_every = 2 * epoch
    config.train.checkpoint_every = 2 * epoch
    return config


def diffusion_config() -> ml_collections.ConfigDict:
    """`base_config()` set up for diffusion on MNIST in [-1, 1]: a DDPM (cosine schedule, noise
    prediction) with a U-Net sized for a CPU (16, 32, 32 features at 28, 14, 7 pixels: 0.45M
    parameters), batch 64, Adam 1e-3 with warm-up and cosine decay, an EMA, DDIM sampling; 6
    epochs, evaluated every 2."""
    config = base_config()
    config.task = ml_collections.ConfigDict(
        {
            "name": "diffusion",
            "objective": "ddpm",  # or "flow": rectified flow / conditional flow matching
            "schedule": "cosine",  # ddpm's noise schedule, or "linear"
            "prediction": "epsilon",  # ddpm: or "v"; flow: "velocity"
            "time_distribution": "uniform",  # of training times; or "logit_normal"
            "label_dropout": 0.1,  # class-conditional: labels replaced by "no label" (guidance)
            "ema_decay": 0.999,
            "sampler": "ddim",  # or "ddpm", "euler", "heun" (gen_jax/tasks/samplers.py)
            "sample_steps": 50,  # of samples and the final evaluation
            "eta": 0.0,  # ddim's noise: 0 deterministic
            "guidance_scale": 1.0,  # classifier-free guidance; 1: the conditional model alone
            "clip_denoised": True,  # clip the x_0 estimate to [-1, 1] at every step
            "classifier_workdir": "",  # a finished classifier run: FID, IS, precision, recall
            "inception_samples": 0,  # > 0: the final evaluation's Inception-v3 FID, KID, P/R
            "inception_reference": 0,  # train images of its reference statistics (0: all)
            "eval_samples": 1_000,  # images scored (and test loss images) by periodic evals ...
            "eval_steps": 20,  # ... drawn in this many steps
            "final_eval_samples": 10_000,  # ... and by the final one (<= eval split size)
            "neighbours": 3,  # k of the k-NN manifolds of precision and recall
            "eval_seed": 0,  # fixes the evaluation noise and the picture noise
        }
    )
    config.model = ml_collections.ConfigDict(
        {"name": "unet", "features": 16, "channel_multipliers": (1, 2, 2), "blocks_per_level": 2}
    )
    config.data.preprocess = ("scale_to_symmetric",)
    config.data.batch_size = 64
    config.data.eval_batch_size = 500
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 200
    epoch = 60_000 // config.data.batch_size
    config.train.update(
        {"num_steps": 6 * epoch, "eval_every": 2 * epoch, "checkpoint_every": epoch // 2}
    )
    return config


def flow_config() -> ml_collections.ConfigDict:
    """`diffusion_config()` for flow matching: rectified flow (the straight Gaussian path), the
    network regressing the velocity noise - image; sampled by Heun's method in 10 steps (19
    network evaluations), 5 (9) in periodic evaluations."""
    config = diffusion_config()
    config.task.update(
        {
            "objective": "flow",
            "prediction": "velocity",
            "sampler": "heun",
            "sample_steps": 10,
            "eval_steps": 5,
        }
    )
    return config


def paper_cifar10_config() -> ml_collections.ConfigDict:
    """`diffusion_config()` at the CIFAR-10 papers' scale, for accelerators: canonical CIFAR-10
    with random flips, DDPM's U-Net (128 features, multipliers 1-2-2-2, 2 blocks a level,
    attention at 16 pixels and in the middle, dropout 0.1, conv resampling: 35.7M parameters),
    batch 128, Adam 2e-4 after 5,000 warm-up steps, gradients clipped to norm 1, EMA 0.9999; the
    final evaluation scores 10,000 samples (the test split's size) in the Inception-v3 against the
    50,000 training images."""
    config = diffusion_config()
    config.data.update(
        {
            "name": "cifar10",  # canonical: a prepared TFDS copy, else downloaded (docs/data.md)
            "preprocess": ("horizontal_flip", "scale_to_symmetric"),
            "batch_size": 128,
            "eval_batch_size": 500,
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "name": "unet",
            "image_shape": (32, 32, 3),
            "features": 128,
            "channel_multipliers": (1, 2, 2, 2),
            "blocks_per_level": 2,
            "attention": True,
            "attention_resolutions": (16,),
            "heads": 1,
            "groups": 32,
            "dropout": 0.1,
            "resample": "conv",
        }
    )
    config.optimizer.update(
        {
            "learning_rate": 2e-4,
            "schedule": "constant",
            "warmup_steps": 5_000,
            "clip_norm": 1.0,
        }
    )
    config.task.update(
        {
            "ema_decay": 0.9999,
            "inception_samples": 10_000,
            "final_eval_samples": 10_000,
            "eval_samples": 1_000,
        }
    )
    config.train.update({"eval_every": 50_000, "checkpoint_every": 10_000})
    return config


# Overrides shared by the QUICK runs of `gen-jax reproduce --quick` (gen_jax/reproduce.py).
QUICK_VAE = [  # 200 steps; 10 importance samples, so the final evaluation takes seconds
    "--config.train.num_steps=200",
    "--config.task.inception_samples=0",  # the papers' Inception scores: full runs only
    "--config.task.eval_samples=10",
    "--config.task.final_eval_samples=10",
    "--config.task.eval_sample_chunk=10",
]
QUICK_GAN = [
    "--config.train.num_steps=300",
    "--config.task.eval_samples=2000",
    "--config.task.inception_samples=0",
]
QUICK_DIFFUSION = [  # 250 steps of 32 images; 500 samples scored in the final evaluation
    "--config.train.num_steps=250",
    "--config.data.batch_size=32",
    "--config.task.inception_samples=0",
    "--config.task.final_eval_samples=500",
]
