"""gen_jax: image models (CNN, GANs, VAEs) on one sharded, resumable JAX training path."""

__version__ = "0.1.0"
