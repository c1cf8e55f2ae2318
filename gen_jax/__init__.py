"""gen_jax: image models (CNN, GANs, VAEs) on one sharded, resumable JAX training path.

`gen_jax.load_run(workdir)` loads a trained run for notebooks (see `gen_jax.run`).
"""

from gen_jax import host

__version__ = "0.1.0"
host.multithreaded_convolutions()  # before JAX starts: XLA flags apply only then


def __getattr__(name: str):
    # imported on first use, so `import gen_jax.cli` (and `gen-jax --help`) stays free of JAX
    if name in ("load_run", "Run"):
        from gen_jax import run

        return getattr(run, name)
    raise AttributeError(f"module 'gen_jax' has no attribute '{name}'")
