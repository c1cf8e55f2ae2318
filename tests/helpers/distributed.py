"""Runs across devices and hosts: two-host runs of the mocked CLI, their arguments and dumped
params, and the tolerances of comparing a run on other devices with one on a single device."""

import contextlib
import socket
import subprocess
from collections.abc import Iterator

import jax
import numpy as np

from gen_jax.metric_writer import read_metrics
from tests.helpers.processes import mocked_cli

DUMP_PARAMS = {"GEN_JAX_DUMP_PARAMS": "1"}  # tests/mocked_cli.py: each process's own params


def train_args(experiment, workdir, *extra):
    return ["train", str(experiment), "--workdir", str(workdir), *extra]


def train_losses(workdir):
    return np.array(
        [r["value"] for r in read_metrics(workdir) if r["split"] == "train" and r["name"] == "loss"]
    )


def relative_difference(a, b, scale=None) -> float:
    """|a - b| / |scale| (default |a|) in the L2 norm over a whole array (0 when both are zero):
    the size of a difference against the size of what is compared, so that a leaf of Adam second
    moments (~1e-8) is judged by its own scale and near-zero elements do not dominate."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.linalg.norm(a if scale is None else np.asarray(scale, np.float64))
    return float(np.linalg.norm(a - b) / scale) if scale else float(np.abs(b).max(initial=0))


def assert_trees_close(a, b, rtol, scales=None):
    """Every leaf of `b` within `rtol` of the same leaf of `a`, relatively (relative_difference),
    each judged on the size of its leaf in `scales` (default: `a`'s)."""
    scales = jax.tree.leaves(a if scales is None else scales)
    differences = {
        jax.tree_util.keystr(path): relative_difference(x, y, scale)
        for (path, x), y, scale in zip(
            jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), scales, strict=True
        )
    }
    too_far = {name: d for name, d in differences.items() if not d <= rtol}
    assert not too_far, f"leaves further apart than {rtol:g} (relative, L2): {too_far}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Tolerances of the 1-vs-8-device comparison. Both sides compute the same global batch; they
# differ only in the order of float32 reductions (a sum over 8 device partials, all-reduced,
# against one sum) and in the kernels XLA picks for a batch of 16 or 2 per device, which depend
# on the CPU's vector width (AVX2 or AVX-512). One step's loss is a mean over a few thousand
# float32 terms: it agrees to a few ulps (~1e-6 relative). Each Adam step then feeds those
# differences back into the parameters. A real bug is far larger: batch-norm statistics taken
# per device instead of over the global batch, or a device drawing another device's noise,
# changes the first loss already by ~1e-2 (checked once by breaking the code that way: RESULTS.md).
FIRST_STEPS, FIRST_RTOL = 3, 2e-5  # before rounding has been amplified by training
TRAJECTORY_RTOL = {  # all 10 steps' losses, and every state leaf after them
    "classifier": 1e-4,  # batch norm, dropout, random shifts; a smooth objective
    "vae": 1e-4,
    # A GAN is chaotic: each player's update moves the other's loss, and a 1e-6 difference grows
    # ~2x per step (on the AMD Zen 3, losses agreed to 1e-6 for 8 steps and by 2.8e-5 at step
    # 12). Its trajectory is compared loosely; its first steps are where a bug would show.
    "gan": 1e-3,
    "wgan_gp": 1e-3,  # conditional, 2 critic steps, gradient penalty
    "r1_gan": 1e-3,  # an R1 penalty through the discriminator
    "diffusion": 1e-4,  # a regression, like the VAE's
}


@contextlib.contextmanager
def two_hosts(experiment, workdir, *extra: str) -> Iterator[list[subprocess.Popen]]:
    """Both processes of a two-process run on 127.0.0.1 (two fake devices each, `extra` train
    arguments), output piped, each dumping its own params at every checkpoint; killed when the
    block ends."""
    address = f"127.0.0.1:{free_port()}"
    piped = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                mocked_cli(
                    train_args(experiment, workdir, *host_flags(address, process), *extra),
                    devices=2,
                    env=DUMP_PARAMS,
                    **piped,
                )
            )
            for process in range(2)
        ]


def host_flags(address: str, process: int) -> list[str]:
    return ["--coordinator_address", address, "--num_processes", "2", "--process_id", str(process)]


def finish(hosts) -> None:
    outputs = [host.communicate(timeout=300)[0] for host in hosts]
    assert [host.returncode for host in hosts] == [0, 0], "\n".join(outputs)


def dumped_params(workdir, process, step):
    return dict(np.load(workdir / "local_params" / f"process{process}_step{step}.npz"))
