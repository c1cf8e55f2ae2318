"""Guarantees that need fresh processes: device counts, several hosts, exits, kills.

Every run here is the real CLI on mocked MNIST (tests/mocked_cli.py) in its own process.
"""

import contextlib
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import jax
import numpy as np
import pytest

from gen_jax import checkpoint, train
from gen_jax import config as config_lib
from gen_jax.metric_writer import read_metrics
from tests.conftest import check_call_mocked_cli, mocked_cli, write_experiment

pytestmark = pytest.mark.slow

DUMP_PARAMS = {"GEN_JAX_DUMP_PARAMS": "1"}  # tests/mocked_cli.py: each process's own params
TWO_HOST_STEPS = 20
STOP_SECONDS = 20  # how soon a process whose peer was killed must have stopped


def train_args(experiment, workdir, *extra):
    return ["train", str(experiment), "--workdir", str(workdir), *extra]


def train_losses(workdir):
    return np.array(
        [r["value"] for r in read_metrics(workdir) if r["split"] == "train" and r["name"] == "loss"]
    )


def assert_trees_close(a, b, atol):
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol),
        a,
        b,
    )


def assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """family -> (experiment, workdir) of 12 steps on one device in one process, a checkpoint
    after each: the reference that runs on 8 devices and interrupted runs must meet. Made once per
    family and module."""
    made = {}

    def make(family: str):
        if family not in made:
            root = tmp_path_factory.mktemp(f"straight_{family}")
            settings = {
                "train.num_steps": 12,
                "train.checkpoint_every": 1,
                "train.keep_checkpoints": 3,
            }
            experiment = write_experiment(root / "tiny.py", family, **settings)
            check_call_mocked_cli(train_args(experiment, root / "run"))
            made[family] = experiment, root / "run"
        return made[family]

    return make


@pytest.mark.parametrize(
    "family, loss_tolerance",
    [
        ("classifier", {"atol": 1e-5, "rtol": 0}),
        # a VAE loss is ~500 nats, a sum over 784 pixels: float32 resolves it to ~6e-5 absolute
        ("vae", {"atol": 0, "rtol": 1e-6}),
        ("gan", {"atol": 1e-5, "rtol": 0}),  # batch norm over the global batch in both players
        ("wgan_gp", {"atol": 1e-5, "rtol": 0}),  # conditional, 2 critic steps, gradient penalty
        ("r1_gan", {"atol": 1e-5, "rtol": 0}),  # an R1 penalty through the discriminator
    ],
)
def test_one_device_and_eight_devices_agree_after_twelve_steps(
    family, loss_tolerance, straight_run, tmp_path, mock_mnist
):
    experiment, one_device = straight_run(family)
    check_call_mocked_cli(train_args(experiment, tmp_path / "d8"), devices=8)
    np.testing.assert_allclose(
        train_losses(one_device), train_losses(tmp_path / "d8"), **loss_tolerance
    )
    assert len(train_losses(one_device)) == 12
    one, eight = train.load_state(one_device)[3], train.load_state(tmp_path / "d8")[3]
    assert_trees_close(one, eight, atol=1e-5)  # params, batch statistics, optimizer state


@contextlib.contextmanager
def two_hosts(experiment, workdir) -> Iterator[list[subprocess.Popen]]:
    """Both processes of a two-process run on 127.0.0.1 (two fake devices each), output piped,
    each dumping its own params at every checkpoint; killed when the block ends."""
    address = f"127.0.0.1:{free_port()}"
    piped = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                mocked_cli(
                    train_args(experiment, workdir, *host_flags(address, process)),
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


@pytest.fixture(scope="module")
def two_host_run(tmp_path_factory):
    """(experiment, workdir) of an uninterrupted two-process run: 20 steps, a checkpoint every
    5, ~3 s of training after ~20 s of start: time to kill a process during a save mid-run."""
    root = tmp_path_factory.mktemp("two_hosts")
    experiment = write_experiment(root / "tiny.py", **{"train.num_steps": TWO_HOST_STEPS})
    with two_hosts(experiment, root / "run") as hosts:
        finish(hosts)
    return experiment, root / "run"


def test_two_hosts_end_with_identical_params_equal_to_one_process(two_host_run, tmp_path):
    experiment, multi = two_host_run
    single = tmp_path / "single"
    check_call_mocked_cli(train_args(experiment, single, "--stop_at", "10"), env=DUMP_PARAMS)
    first, second = dumped_params(multi, 0, 10), dumped_params(multi, 1, 10)
    assert_trees_equal(first, second)
    assert_trees_close(first, dumped_params(single, 0, 10), atol=1e-5)


def test_two_hosts_log_each_step_once_and_write_one_valid_config(two_host_run):
    experiment, workdir = two_host_run
    losses = [r for r in read_metrics(workdir) if r["split"] == "train" and r["name"] == "loss"]
    assert [r["step"] for r in losses] == list(range(1, TWO_HOST_STEPS + 1))
    assert config_lib.load(workdir / "config.json") == config_lib.with_absolute_paths(
        config_lib.load_experiment(experiment)
    )


def test_a_killed_host_stops_the_other_with_a_message_and_both_resume_bitwise(
    two_host_run, tmp_path
):
    experiment, uninterrupted = two_host_run
    workdir, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"

    def saving():  # a save under way after a finished one: the kill lands during a save
        names = [p.name for p in checkpoints.glob("*")]
        return any(n.isdigit() for n in names) and any("tmp" in n for n in names)

    with two_hosts(experiment, workdir) as (survivor, victim):
        deadline = time.monotonic() + 120
        while not saving():
            assert survivor.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run made no checkpoint"
            time.sleep(0.002)
        victim.kill()
        killed = time.monotonic()
        output = survivor.communicate(timeout=STOP_SECONDS)[0]
        seconds = time.monotonic() - killed
    # the survivor notices at its next collective, which fails at once on the connection the
    # killed process's exit reset (0.1-0.3 s measured); the bound leaves room for a loaded
    # machine and stays far below jax's 100 s heartbeat timeout, the other way it could learn
    assert seconds < STOP_SECONDS
    assert survivor.returncode == 2, output  # not -6: no abort from jax.distributed's shutdown
    latest = checkpoint.latest_step(checkpoints)
    assert latest is not None and latest < TWO_HOST_STEPS
    [message] = [line for line in output.splitlines() if line.startswith("gen-jax: error:")]
    assert "process 1 of this 2-process run is gone or stopped answering" in message
    assert f"The last complete checkpoint in {checkpoints} is step {latest} " in message
    assert "Traceback" not in output and "stack trace" not in output
    assert output.rstrip().endswith(shlex.join(["gen-jax", *survivor.args[2:]]))

    with two_hosts(experiment, workdir) as hosts:
        finish(hosts)
    resumed_at = [r["step"] for r in read_metrics(workdir) if r["name"] == "first_step_seconds"]
    assert resumed_at[-1] == latest + 1
    for process in range(2):
        assert_trees_equal(
            dumped_params(uninterrupted, process, TWO_HOST_STEPS),
            dumped_params(workdir, process, TWO_HOST_STEPS),
        )


@pytest.mark.parametrize("family", ["classifier", "vae", "gan", "wgan_gp", "r1_gan"])
def test_a_run_stopped_halfway_and_resumed_in_a_new_process_is_bitwise_identical(
    family, straight_run, tmp_path, mock_mnist
):
    experiment, straight = straight_run(family)
    reference = train.load_state(straight)[3]
    check_call_mocked_cli(train_args(experiment, tmp_path / "run", "--stop_at", "6"))
    assert int(train.load_state(tmp_path / "run")[3].step) == 6
    check_call_mocked_cli(train_args(experiment, tmp_path / "run"))
    assert_trees_equal(reference, train.load_state(tmp_path / "run")[3])


def test_sigkill_mid_run_and_mid_save_leaves_a_workdir_that_resumes(
    straight_run, tmp_path, mock_mnist
):
    experiment, straight = straight_run("classifier")
    reference = train.load_state(straight)[3]
    workdir, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"

    def finished_steps():  # renamed into place: a tmp directory is unfinished, whatever it holds
        return sorted(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit())

    killed_during_save = False
    for delay in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        with mocked_cli(train_args(experiment, workdir), **quiet) as process:
            start = finished_steps()[-1] if finished_steps() else 0
            deadline = time.time() + 120
            while (
                not finished_steps() or finished_steps()[-1] <= start
            ) and process.poll() is None:
                assert time.time() < deadline, "the run made no checkpoint"
                time.sleep(0.01)
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait()
        killed_during_save |= any("tmp" in p.name for p in checkpoints.glob("*"))
        if finished_steps()[-1] >= 10 and killed_during_save:
            break
    assert killed_during_save, "no kill landed during a save; the test did not test that case"
    latest = finished_steps()[-1]
    output = check_call_mocked_cli(train_args(experiment, workdir))
    assert "error" not in output.lower()
    resumed_at = [r["step"] for r in read_metrics(workdir) if r["name"] == "first_step_seconds"][-1]
    assert resumed_at == min(latest + 1, 12) or latest == 12
    assert_trees_equal(reference, train.load_state(workdir)[3])
