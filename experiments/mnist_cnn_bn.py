"""Stronger CNN on MNIST: batch norm, max pooling, dropout, random shifts of up to 2 pixels,
label smoothing, Adam with warm-up and cosine decay, 15 epochs.

    gen-jax train experiments/mnist_cnn_bn.py --workdir runs/mnist_cnn_bn

Goal: test accuracy >= 99.6%.
Measured: RESULTS.md, section 'CNN classifier (MNIST test set, 10,000 images)'.
"""

from gen_jax.recipes import base_config

EPOCH = 60_000 // 128


def get_config():
    config = base_config()
    config.model.name = "bn_cnn"
    config.model.dropout_rate = 0.4
    config.task.label_smoothing = 0.1
    config.task.max_shift = 2
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = EPOCH // 2
    config.train.num_steps = 15 * EPOCH
    config.train.eval_every = EPOCH
    config.train.checkpoint_every = EPOCH
    return config


# `gen-jax reproduce` checks: metric -> (value, tolerance) or a goal ('<=' | '>=', bound).
EXPECTED = {"accuracy": (0.9968, 0.002)}
QUICK = {"overrides": ["--config.train.num_steps=300"], "expected": {"accuracy": (0.989, 0.01)}}
