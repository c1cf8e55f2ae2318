"""`gen-jax` on mocked MNIST, for tests that need a fresh process (devices, hosts, kills).

    python tests/mocked_cli.py train EXPERIMENT --workdir DIR [...] [--then COMMAND ...]

Runs the real CLI entry point under `tfds.testing.mock_data`: one command, or several separated
by `--then`, one after the other in this process (each as a fresh `gen-jax` call; the first that
fails ends the process with its status), so a test pays one process start for several runs. With
GEN_JAX_DUMP_PARAMS set, every checkpoint also writes this process's own copy of the params to
`WORKDIR/local_params/process{i}_step{n}.npz`, so tests can compare what each process holds. With
GEN_JAX_FILE_SIZE_LIMIT=N, writing past N bytes of any file fails, as on a full disk.
"""

import contextlib
import os
import sys
from pathlib import Path
from unittest import mock

import tensorflow_datasets as tfds

MOCK_EXAMPLES = 256
THEN = "--then"  # separates the commands of one process


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


def _dump_params_on_save() -> None:
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
        folder = Path(self.manager.directory).parent / "local_params"  # WORKDIR/local_params
        os.makedirs(folder, exist_ok=True)
        np.savez(folder / f"process{jax.process_index()}_step{step}.npz", **flat)

    checkpoint.Checkpointer.save = save_and_dump


def split_commands(argv: list[str]) -> list[list[str]]:
    """The commands of `argv`, split at each `--then`."""
    commands = [[]]
    for arg in argv:
        if arg == THEN:
            commands.append([])
        else:
            commands[-1].append(arg)
    return commands


if __name__ == "__main__":
    from gen_jax import cli

    if os.environ.get("GEN_JAX_DUMP_PARAMS"):
        _dump_params_on_save()
    if os.environ.get("GEN_JAX_FILE_SIZE_LIMIT"):
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write raises instead
        limit = int(os.environ["GEN_JAX_FILE_SIZE_LIMIT"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    with mock_mnist():
        for command in split_commands(sys.argv[1:]):
            status = cli.main(command)
            if status:
                sys.exit(status)
