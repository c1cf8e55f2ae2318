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
from PIL import Image

import gen_jax
from gen_jax import checkpoint, cli, train
from gen_jax import config as config_lib
from gen_jax.metric_writer import logged_metrics, read_metrics
from tests.conftest import (
    DEVICE_RUN_FAMILIES,
    assert_trees_equal,
    chained,
    check_call_mocked_cli,
    locked_by_another_process,
    mocked_cli,
    write_experiment,
)

pytestmark = pytest.mark.slow

DUMP_PARAMS = {"GEN_JAX_DUMP_PARAMS": "1"}  # tests/mocked_cli.py: each process's own params
TWO_HOST_STEPS = 60  # long enough that a SIGTERM stops the run before its end
STOP_SECONDS = 20  # how soon a process whose peer was killed must have stopped


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


@pytest.mark.parametrize("family", DEVICE_RUN_FAMILIES)
def test_one_device_and_eight_devices_agree_after_ten_steps(family, device_runs, mock_mnist):
    one_device, eight = device_runs / "one_device" / family, device_runs / "eight_devices" / family
    losses = {run: train_losses(run) for run in (one_device, eight)}
    assert len(losses[one_device]) == 10
    first, trajectory = losses[one_device], losses[eight]
    # relative to the size of the run's losses, not of each one: a WGAN's loss is a difference of
    # critic scores and crosses zero (-0.0074 at step 1), where rounding is that of its terms
    scale = np.abs(first).mean()
    np.testing.assert_allclose(
        first[:FIRST_STEPS], trajectory[:FIRST_STEPS], rtol=FIRST_RTOL, atol=FIRST_RTOL * scale
    )
    rtol = TRAJECTORY_RTOL[family]
    np.testing.assert_allclose(first, trajectory, rtol=rtol, atol=rtol * scale)
    states = [train.load_state(run)[3] for run in (one_device, eight)]
    # The diffusion EMA is judged on the scale of the weights it averages: an average of weights
    # that cross zero can cancel (the output layer's bias: 8e-5, its EMA 1e-7), and the weights'
    # rounding (~1e-11 a step, summed by the average) then looks large beside it (1e-3 of the
    # EMA, measured; 1e-6 of the weight).
    scales = states[0].replace(ema=states[0].params) if family == "diffusion" else None
    # params, statistics, Adam moments
    assert_trees_close(*states, rtol=TRAJECTORY_RTOL[family], scales=scales)


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


@pytest.fixture(scope="module")
def two_host_run(tmp_path_factory):
    """(experiment, workdir) of an uninterrupted two-process run: 60 steps, a checkpoint every
    5, several seconds of training after ~20 s of start: time to kill or stop a process mid-run."""
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
    # 4 devices in 2 processes against 1: the classifier's reductions in another order
    assert_trees_close(first, dumped_params(single, 0, 10), rtol=TRAJECTORY_RTOL["classifier"])


def test_two_hosts_log_each_step_once_and_write_one_valid_config(two_host_run):
    experiment, workdir = two_host_run
    losses = [r for r in read_metrics(workdir) if r["split"] == "train" and r["name"] == "loss"]
    assert [r["step"] for r in losses] == list(range(1, TWO_HOST_STEPS + 1))
    expected = config_lib.with_absolute_paths(config_lib.load_experiment(experiment))
    expected.model.num_classes = 10  # the run records what it took from the data
    assert config_lib.load(workdir / "config.json") == expected


def test_a_workdir_that_another_trainer_holds_stops_both_processes_with_a_message(tmp_path):
    experiment = write_experiment(tmp_path / "tiny.py")
    with (
        locked_by_another_process(tmp_path / "run") as holder,
        two_hosts(experiment, tmp_path / "run") as hosts,
    ):
        outputs = [host.communicate(timeout=120)[0] for host in hosts]
    assert [host.returncode for host in hosts] == [2, 2], "\n".join(outputs)
    assert f"is being trained by pid {holder.pid}" in outputs[0]
    assert "process 0 could not lock" in outputs[1]
    assert not any("Traceback" in output for output in outputs)
    assert not (tmp_path / "run" / "config.json").exists()


def assert_two_hosts_resume_bitwise(experiment, workdir, latest: int, uninterrupted) -> None:
    """Both processes, run again, resume after checkpoint `latest` and end with the params of the
    `uninterrupted` run."""
    with two_hosts(experiment, workdir) as hosts:
        finish(hosts)
    resumed_at = [r["step"] for r in read_metrics(workdir) if r["name"] == "first_step_seconds"]
    assert resumed_at[-1] == latest + 1
    for process in range(2):
        assert_trees_equal(
            dumped_params(uninterrupted, process, TWO_HOST_STEPS),
            dumped_params(workdir, process, TWO_HOST_STEPS),
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
    # the save under way stays unfinished (its temporary folder, cleared at the next start)
    assert any("tmp" in p.name for p in checkpoints.glob("*")), "the kill missed the save"
    # from the step folders, not from checkpoint.latest_step, which wrote the message below
    latest = max(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit())
    assert latest < TWO_HOST_STEPS
    [message] = [line for line in output.splitlines() if line.startswith("gen-jax: error:")]
    assert "process 1 of this 2-process run is gone or stopped answering" in message
    assert f"The last complete checkpoint in {checkpoints} is step {latest} " in message
    assert "Traceback" not in output and "stack trace" not in output
    assert output.rstrip().endswith(shlex.join(["gen-jax", *survivor.args[2:]]))

    assert_two_hosts_resume_bitwise(experiment, workdir, latest, uninterrupted)


def wait_for(ready, processes, what: str) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        assert all(p.poll() is None for p in processes), f"a process ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after 120 s"
        time.sleep(0.01)


def assert_stopped_with_a_checkpoint(processes, outputs, statuses, checkpoints, end) -> int:
    """Every process exited with its expected status (128 + a signal's number) after one message
    naming the same saved step, before the run's end; returns that step."""
    assert [p.returncode for p in processes] == statuses, "\n".join(outputs)
    latest = checkpoint.latest_step(checkpoints)
    assert latest < end, "the run ended before the signal stopped it: nothing was tested"
    for output in outputs:
        [message] = [line for line in output.splitlines() if "stopped by a signal" in line]
        assert f"at step {latest}, saved in {checkpoints}." in message
        assert "Traceback" not in output
    return latest


def test_ctrl_c_stops_after_the_step_under_way_with_a_checkpoint_and_resumes_bitwise(
    tmp_path, mock_mnist
):
    steps = 100
    overrides = {"train.num_steps": steps, "train.checkpoint_every": 0}
    experiment = write_experiment(tmp_path / "tiny.py", **overrides)
    reference, workdir = tmp_path / "reference", tmp_path / "run"
    check_call_mocked_cli(train_args(experiment, reference))
    piped = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    with mocked_cli(train_args(experiment, workdir), **piped) as process:
        first_step = lambda: (workdir / "metrics.jsonl").exists() and read_metrics(workdir)
        wait_for(first_step, [process], "a first step")  # the training loop is running
        process.send_signal(signal.SIGINT)
        outputs = [process.communicate(timeout=60)[0]]
    checkpoints = workdir / "checkpoints"
    statuses = [128 + signal.SIGINT]
    latest = assert_stopped_with_a_checkpoint([process], outputs, statuses, checkpoints, steps)
    check_call_mocked_cli(train_args(experiment, workdir))
    resumed_at = [r["step"] for r in read_metrics(workdir) if r["name"] == "first_step_seconds"]
    assert resumed_at == [1, latest + 1]
    assert_trees_equal(train.load_state(reference)[3], train.load_state(workdir)[3])


@pytest.mark.parametrize(
    "sent",
    [signal.SIGTERM, signal.SIGINT],  # as a scheduler announces a preemption; Ctrl-C in a shell
    ids=["sigterm", "ctrl_c"],
)
def test_a_signal_to_one_host_stops_both_after_the_same_step_and_they_resume_bitwise(
    two_host_run, tmp_path, sent
):
    experiment, uninterrupted = two_host_run
    workdir = tmp_path / "run"
    with two_hosts(experiment, workdir) as hosts:
        # process 0 writes it once every process has joined jax.distributed
        wait_for((workdir / "config.json").exists, hosts, "config.json")
        hosts[1].send_signal(sent)  # a Ctrl-C is relayed as a SIGTERM to jax's preemption service
        outputs = [host.communicate(timeout=120)[0] for host in hosts]
    checkpoints = workdir / "checkpoints"
    statuses = [128 + signal.SIGTERM, 128 + sent]  # the other process heard of a preemption
    latest = assert_stopped_with_a_checkpoint(hosts, outputs, statuses, checkpoints, TWO_HOST_STEPS)
    assert_two_hosts_resume_bitwise(experiment, workdir, latest, uninterrupted)


@pytest.fixture(scope="module")
def resumed_runs(device_runs, tmp_path_factory):
    """Each family's run of `device_runs`, stopped at step 6 in one process and resumed to the
    end in another (one process for all the stops, one for all the resumes)."""
    root = tmp_path_factory.mktemp("resumed")
    commands = lambda *extra: chained(
        train_args(device_runs / "experiments" / f"{family}.py", root / family, *extra)
        for family in DEVICE_RUN_FAMILIES
    )
    check_call_mocked_cli(commands("--stop_at", "6"), timeout=900)
    check_call_mocked_cli(commands(), timeout=900)
    return root


@pytest.mark.parametrize("family", DEVICE_RUN_FAMILIES)
def test_a_run_stopped_halfway_and_resumed_in_a_new_process_is_bitwise_identical(
    family, device_runs, resumed_runs, mock_mnist
):
    resumed = resumed_runs / family
    starts = [r["step"] for r in read_metrics(resumed) if r["name"] == "first_step_seconds"]
    assert starts == [1, 7]  # stopped after step 6, resumed from its checkpoint
    reference = train.load_state(device_runs / "one_device" / family)[3]
    assert_trees_equal(reference, train.load_state(resumed)[3])
    np.testing.assert_array_equal(
        train_losses(device_runs / "one_device" / family), train_losses(resumed)
    )


def test_sigkill_mid_run_and_mid_save_leaves_a_workdir_that_resumes(
    device_runs, tmp_path, mock_mnist
):
    experiment = device_runs / "experiments" / "classifier.py"
    reference = train.load_state(device_runs / "one_device" / "classifier")[3]
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
        if killed_during_save:
            break
    assert killed_during_save, "no kill landed during a save; the test did not test that case"
    latest = finished_steps()[-1]
    output = check_call_mocked_cli(train_args(experiment, workdir))
    assert "error" not in output.lower()
    resumed_at = [r["step"] for r in read_metrics(workdir) if r["name"] == "first_step_seconds"][-1]
    assert resumed_at == min(latest + 1, 10) or latest == 10
    assert_trees_equal(reference, train.load_state(workdir)[3])


# Evaluating the same state on 1 device instead of 8 changes only the order of float32 sums
# (per-device partial sums of the metrics, and of the FID's feature statistics over 64 samples):
# a few ulps of each sum. FID takes a matrix square root of those statistics, which can amplify
# rounding ~100x for ill-conditioned covariances, so 1e-4 relative. A state restored wrongly on
# another device count (a missing leaf, the generator instead of its EMA, a shard of the batch
# statistics) changes these metrics by whole percents.
EVAL_RTOL = {"vae": 1e-5, "gan": 1e-4, "diffusion": 1e-4}
# Precision, recall and class fractions count samples (steps of 1/64 here): a sample whose
# nearest-neighbour distance or top class sits within those ulps of a tie may count the other
# way, so they may differ by one sample. A wrong restore moves them by many.
COUNTED = ("precision", "recall", "fraction", "classes")
EVAL_SAMPLES = 64  # the tiny runs' final evaluation (tests/conftest.py FAMILIES)
# The grids are the samples rounded to 8-bit levels: a value within those ulps of a level's edge
# rounds the other way, one level off. Measured: none so far; allowed: 1% of the pixels.
GRID_PIXELS_OFF_BY_ONE = 0.01


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vae", "gan", "diffusion"])
def test_a_run_trained_on_eight_devices_loads_on_one_with_the_same_outputs(
    family, device_runs, tmp_path, mock_mnist
):
    workdir = device_runs / "eight_devices" / family
    on_eight = logged_metrics(workdir, 10, "test")  # its final evaluation, on the 8 devices
    if family != "vae":  # scored in a classifier's features, so there are scores to compare
        assert {"fid", "inception_score", "precision", "recall"} <= set(on_eight)
    run = gen_jax.load_run(workdir)  # this process: one CPU device
    assert len(run.mesh.devices.flat) == 1
    on_one = run.evaluate()
    assert set(on_one) == {"step", *on_eight}
    for name, value in on_eight.items():
        if any(word in name for word in COUNTED):  # one sample either way
            assert abs(on_one[name] - value) <= 1 / EVAL_SAMPLES + 1e-9, name
        else:
            assert on_one[name] == pytest.approx(value, rel=EVAL_RTOL[family], abs=1e-6), name
    cli.main(["sample", str(workdir), "--num", "16", "--out", str(tmp_path / "one.png")])
    grid_on_eight = np.asarray(Image.open(device_runs / "eight_devices" / f"{family}.png"))
    off = np.abs(grid_on_eight.astype(int) - np.asarray(Image.open(tmp_path / "one.png")))
    assert off.max() <= 1 and (off > 0).mean() <= GRID_PIXELS_OFF_BY_ONE
