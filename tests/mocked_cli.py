"""`gen-jax` on mocked MNIST, for tests that need a fresh process (devices, hosts, kills).

    python tests/mocked_cli.py train EXPERIMENT --workdir DIR [...]

Runs the real CLI entry point under `tfds.testing.mock_data`. With GEN_JAX_DUMP_PARAMS set, every
checkpoint also writes this process's own copy of the params to
`WORKDIR/local_params/process{i}_step{n}.npz`, so tests can compare what each process holds.
"""

import contextlib
import os
import sys
from unittest import mock

import tensorflow_datasets as tfds

MOCK_EXAMPLES = 256


@contextlib.contextmanager
def mock_mnist(num_examples: int = MOCK_EXAMPLES):
    """`tfds.testing.mock_data` for `tfds.data_source`, deterministic random MNIST-shaped examples.

    tfds 4.9.10's mock installs a batched `__getitems__` that cannot be called (it is set on a
    MagicMock, which does not bind it); reading the examples one by one avoids it.
    """
    from gen_jax import data

    one_by_one = lambda self, keys: [self[k] for k in keys]
    data.clear_cache()  # decoded splits are cached: mocked and real data must never mix
    try:
        with (
            tfds.testing.mock_data(
                num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
            ),
            mock.patch.object(
                tfds.core.data_sources.base.BaseDataSource, "__getitems__", one_by_one
            ),
            mock.patch.dict(os.environ),  # mocked data lives in no directory
        ):
            os.environ.pop("TFDS_DATA_DIR", None)
            yield
    finally:
        data.clear_cache()


def _dump_params_on_save(workdir: str) -> None:
    import jax
    import numpy as np

    from gen_jax import checkpoint

    save = checkpoint.Checkpointer.save

    def save_and_dump(self, step, state, iterator):
        save(self, step, state, iterator)
        local = jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), state)
        flat = {
            jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(local)[0]
        }
        os.makedirs(f"{workdir}/local_params", exist_ok=True)
        np.savez(f"{workdir}/local_params/process{jax.process_index()}_step{step}.npz", **flat)

    checkpoint.Checkpointer.save = save_and_dump


if __name__ == "__main__":
    from gen_jax import cli

    if os.environ.get("GEN_JAX_DUMP_PARAMS"):
        _dump_params_on_save(sys.argv[sys.argv.index("--workdir") + 1])
    with mock_mnist():
        sys.exit(cli.main(sys.argv[1:]))
