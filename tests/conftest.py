"""Shared test fixtures: tiny experiment files, mocked MNIST, and the real-data location."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mocked_cli import mock_mnist as _mock_mnist

REPO = Path(__file__).resolve().parents[1]
MOCKED_CLI = Path(__file__).with_name("mocked_cli.py")


COMMON_SETTINGS = {
    "data.batch_size": 16,
    "data.eval_batch_size": 64,
    "train.num_steps": 10,
    "train.log_every": 1,
    "train.checkpoint_every": 5,
    "train.keep_checkpoints": 100,
}
OPTIMIZER = {"name": "adam", "learning_rate": 1e-3, "schedule": "cosine", "warmup_steps": 2}


def _optimizer_settings(*sections: str) -> dict:
    return {f"{section}.{k}": v for section in sections for k, v in OPTIMIZER.items()}


FAMILIES = {  # config function, settings: tiny versions that exercise every source of randomness
    "classifier": (
        "base_config",
        {
            "model.name": "bn_cnn",  # batch norm and dropout
            "model.features": (8, 16),
            "model.pool_after": (0, 1),
            "model.hidden": 32,
            "model.dropout_rate": 0.25,
            "task.label_smoothing": 0.1,
            "task.max_shift": 2,
            **_optimizer_settings("optimizer"),
        },
    ),
    "vae": (
        "vae_config",
        {
            "model.name": "mlp_vae",
            "model.latent_dim": 4,
            "model.hidden": 32,
            "task.kl_warmup_steps": 5,
            "task.eval_samples": 4,
            "task.final_eval_samples": 8,
            "task.eval_sample_chunk": 4,
            **_optimizer_settings("optimizer"),
        },
    ),
    "gan": (
        "gan_config",
        {
            "model.noise_dim": 8,
            "model.generator_features": (16, 8, 4),
            "model.discriminator_features": (8, 16),
            "task.eval_samples": 64,
            **_optimizer_settings("optimizer.generator", "optimizer.discriminator"),
        },
    ),
}
FAMILIES["wgan_gp"] = (
    "gan_config",
    {
        **FAMILIES["gan"][1],
        "model.num_classes": 10,
        "model.discriminator_norm": "layer",
        "task.loss": "wasserstein",
        "task.gradient_penalty": 10.0,
        "task.critic_steps": 2,
    },
)
FAMILIES["r1_gan"] = (  # the DCGAN recipe: no norm in the discriminator, an R1 penalty
    "gan_config",
    {**FAMILIES["gan"][1], "model.discriminator_norm": "none", "task.r1_penalty": 1.0},
)


def write_experiment(path: Path, family: str = "classifier", **overrides) -> Path:
    """A small experiment file of a task family, for mocked data: tiny and fast."""
    config_function, family_settings = FAMILIES[family]
    settings = {**COMMON_SETTINGS, **family_settings, **overrides}
    lines = "\n".join(f"    config.{k} = {v!r}" for k, v in settings.items())
    path.write_text(
        f"from gen_jax.config import {config_function}\n\n\n"
        f"def get_config():\n    config = {config_function}()\n{lines}\n    return config\n"
    )
    return path


@pytest.fixture
def experiment(tmp_path):
    """Factory: `experiment(**overrides)` writes a tiny experiment file and returns its path."""
    return lambda name="tiny.py", **overrides: write_experiment(tmp_path / name, **overrides)


@pytest.fixture
def mock_mnist():
    """MNIST-shaped random data for every `tfds.data_source` call inside the test."""
    with _mock_mnist():
        yield


@contextlib.contextmanager
def mocked_cli(
    args: list[str], devices: int = 1, env: dict | None = None, **kwargs
) -> Iterator[subprocess.Popen]:
    """Run `gen-jax ARGS` in a fresh process on mocked MNIST with `devices` fake CPU devices.

    The process leads its own process group, which is killed when the block ends, however it
    ends (a failed assertion, a timeout): a test never leaves training processes behind."""
    full_env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        **(env or {}),
    }
    command = [sys.executable, str(MOCKED_CLI), *args]
    process = subprocess.Popen(command, env=full_env, cwd=REPO, start_new_session=True, **kwargs)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):  # none of the group is left
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def check_call_mocked_cli(
    args: list[str], devices: int = 1, env: dict | None = None, timeout: float = 300
) -> str:
    """Run `gen-jax ARGS` mocked to completion; fail the test with its output if it fails."""
    piped = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    with mocked_cli(args, devices, env, **piped) as process:
        output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


@pytest.fixture(scope="session")
def real_data_dir() -> str:
    """The prepared TFDS directory with real MNIST ($TFDS_DATA_DIR or ../shared/data); else skip."""
    candidates = [
        os.environ.get("TFDS_DATA_DIR"),
        str(REPO.parent / "shared/data/tensorflow_datasets"),
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "mnist").is_dir():
            return str(Path(candidate).resolve())
    pytest.skip("real MNIST not found: set TFDS_DATA_DIR (see ../shared/data/README.md)")


QUICK_FAMILIES = ["mnist_cnn", "mnist_vae_mlp", "mnist_dcgan"]  # one experiment per family


@pytest.fixture(scope="session")
def quick_runs(real_data_dir, tmp_path_factory):
    """`gen-jax reproduce --quick` of one experiment per family on the real MNIST, run once:
    (exit code, the folder of the runs, the table it wrote)."""
    from gen_jax import cli

    root = tmp_path_factory.mktemp("reproduce")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TFDS_DATA_DIR", real_data_dir)
        folders = ["--runs", str(root), "--experiments", str(REPO / "experiments")]
        out = ["--out", str(root / "RESULTS.md")]
        code = cli.main(["reproduce", *QUICK_FAMILIES, "--quick", *folders, *out])
    return code, root / "quick", (root / "RESULTS.md").read_text()
