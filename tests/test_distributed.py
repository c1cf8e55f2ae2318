"""Guarantees that need fresh processes: device counts, several hosts, exits, kills.

Every run here is the real CLI on mocked MNIST (tests/mocked_cli.py) in its own process.
"""

import signal
import socket
import subprocess
import time

import jax
import numpy as np
import pytest

from gen_jax import train
from gen_jax.metric_writer import read_metrics
from tests.conftest import check_call_mocked_cli, run_mocked_cli, write_experiment

pytestmark = pytest.mark.slow


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


def test_two_hosts_end_with_identical_params_equal_to_one_process(tmp_path):
    experiment = write_experiment(tmp_path / "tiny.py")
    env = {"GEN_JAX_DUMP_PARAMS": "1"}
    check_call_mocked_cli(train_args(experiment, tmp_path / "single"), devices=1, env=env)
    address = f"127.0.0.1:{free_port()}"
    hosts = [
        run_mocked_cli(
            train_args(
                experiment,
                tmp_path / "multi",
                "--coordinator_address",
                address,
                "--num_processes",
                "2",
                "--process_id",
                str(i),
            ),
            devices=2,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [host.communicate(timeout=300)[0] for host in hosts]
    assert [host.returncode for host in hosts] == [0, 0], "\n".join(outputs)

    def dumped(workdir, process):
        return dict(np.load(workdir / "local_params" / f"process{process}_step10.npz"))

    first, second = dumped(tmp_path / "multi", 0), dumped(tmp_path / "multi", 1)
    assert_trees_equal(first, second)
    assert_trees_close(first, dumped(tmp_path / "single", 0), atol=1e-5)


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
        process = run_mocked_cli(
            train_args(experiment, workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        start = finished_steps()[-1] if finished_steps() else 0
        deadline = time.time() + 120
        while (not finished_steps() or finished_steps()[-1] <= start) and process.poll() is None:
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
