"""Baseline CNN on CIFAR-10 (JPEG copy), an image folder: batch norm, max pooling, dropout; random
crops (4-pixel padding) and flips, per-channel normalisation; Adam with warm-up and cosine decay,
6 epochs. It proves the classifier trains on 32x32x3 folder data; the strong, fast CIFAR-10 recipe
is the speed issue's.

    gen-jax train experiments/cifar10_cnn.py --workdir runs/cifar10_cnn

The folder is decoded once into a cache (~/.cache/gen_jax, or --config.data.cache_dir=...).
data.mean and data.std are the training split's, measured with
`gen_jax.data.channel_stats(config.data, limit=50_000)`.
Measured (and its QUICK run): RESULTS.md, section 'CIFAR-10 (JPEG copy) classifier baseline'.
"""

from gen_jax.recipes import base_config

EPOCH = 50_000 // 256


def get_config():
    config = base_config()
    config.data.folder = "../shared/data/cifar10_jpeg"  # relative to where you run gen-jax
    config.data.batch_size = 256
    config.data.preprocess = ("random_crop", "horizontal_flip", "normalize")
    config.data.mean = (0.4913, 0.4821, 0.4465)
    config.data.std = (0.2452, 0.2428, 0.2606)
    config.model.name = "bn_cnn"
    config.model.features = (32, 64, 128)
    config.model.pool_after = (0, 1, 2)
    config.model.dropout_rate = 0.3
    config.task.label_smoothing = 0.1
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = EPOCH
    config.train.num_steps = 6 * EPOCH
    config.train.eval_every = 2 * EPOCH
    config.train.checkpoint_every = EPOCH
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
# measured once (Intel Xeon VM); another CPU's rounding moves a 6-epoch run by a few tenths
EXPECTED = {"accuracy": (0.7601, 0.015)}
# QUICK: measured once (Intel Xeon VM); 200 steps end inside the warm-up, where another CPU's
# rounding moves a young network by points, not tenths: hence 0.03
QUICK = {"overrides": ["--config.train.num_steps=200"], "expected": {"accuracy": (0.5917, 0.03)}}
