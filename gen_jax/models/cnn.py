"""Convolutional MNIST classifiers (Linen modules: images in, logits out).

Each sows its penultimate activations as intermediates["features"]: the feature space of
the sample-quality metrics (`gen_jax.sample_quality`). `dtype` is the compute precision
("bfloat16" for mixed precision on a GPU or TPU); parameters and logits stay float32."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

FEATURES = "features"  # the penultimate activations, sown for feature-space metrics (FID)


class CNN(nn.Module):
    """The Flax Linen MNIST example's network: conv32-pool-conv64-pool-dense256-dense10."""

    num_classes: int = 10
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout or batch norm: train and eval are the same function
        x = nn.relu(nn.Conv(32, (3, 3), dtype=self.dtype)(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(64, (3, 3), dtype=self.dtype)(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(256, dtype=self.dtype)(x))
        self.sow("intermediates", FEATURES, x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class BatchNormCNN(nn.Module):
    """A stronger classifier: conv blocks with batch norm, max pooling and dropout before the head.

    Batch statistics are means over the global batch: under `jit` with a sharded batch the
    compiler inserts the cross-device reduction.
    """

    num_classes: int = 10
    features: tuple[int, ...] = (32, 64, 64)
    pool_after: tuple[int, ...] = (0, 2)
    hidden: int = 256
    dropout_rate: float = 0.4
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def norm(x):
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)

        for index, features in enumerate(self.features):
            x = nn.Conv(features, (3, 3), use_bias=False, dtype=self.dtype)(x)
            x = nn.relu(norm(x))
            if index in self.pool_after:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(norm(nn.Dense(self.hidden, use_bias=False, dtype=self.dtype)(x)))
        self.sow("intermediates", FEATURES, x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
