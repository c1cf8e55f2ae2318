"""Shared test fixtures: tiny experiment files, mocked MNIST, and the real-data location."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.mocked_cli import THEN
from tests.mocked_cli import mock_mnist as _mock_mnist

REPO = Path(__file__).resolve().parents[1]
MOCKED_CLI = Path(__file__).with_name("mocked_cli.py")
XLA_CACHE = pytest.StashKey[str]()  # the session's folder of compiled programs, to remove
CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    """Share compiled programs between this process and the ones it starts (mocked CLI runs,
    notebook kernels, pytest-xdist's workers) through JAX's persistent compilation cache, in a
    folder of this session: most test runs compile the same few tiny programs, and compiling is
    most of their time. A cached program is the one XLA compiled, so results are unchanged, bit
    for bit. A worker finds the folder its controller made in the environment it inherited."""
    import jax

    inherited = os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(CACHE_VARIABLE)
    folder = inherited or tempfile.mkdtemp(prefix="gen_jax_tests_xla_cache_")
    config.stash[XLA_CACHE] = "" if inherited else folder  # the controller removes it
    settings = {"compilation_cache_dir": folder, "persistent_cache_min_compile_time_secs": 0}
    for name, value in settings.items():
        os.environ[f"JAX_{name.upper()}"] = str(value)  # for the processes the tests start
        jax.config.update(f"jax_{name}", value)


def pytest_unconfigure(config):
    """Remove the session's compiled programs."""
    if config.stash[XLA_CACHE]:
        shutil.rmtree(config.stash[XLA_CACHE], ignore_errors=True)


INCEPTION_IMAGES_AT_MOST = 512  # a test proves the Inception path on a few hundred images


@pytest.fixture(autouse=True, scope="session")
def few_inception_images() -> Iterator[None]:
    """Fail at once, and say why, where a test would run the Inception-v3 on thousands of images:
    an experiment file's 10k-sample final evaluation left on (set
    `--config.task.inception_samples=0`). That is hours on a CPU, which CI once met only as a
    30-minute timeout."""
    from gen_jax.feature_spaces import Inception

    features = Inception.features

    def guarded(self, images, *args, **kwargs):
        if len(images) > INCEPTION_IMAGES_AT_MOST:
            pytest.fail(
                f"a test asked for the Inception features of {len(images)} images (at most "
                f"{INCEPTION_IMAGES_AT_MOST} here): pass --config.task.inception_samples=0 to "
                "a run of an experiment file, or score fewer images"
            )
        return features(self, images, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Inception, "features", guarded)
        yield


SHARED_RUNS = {  # test files whose tests read the same session-trained runs -> their group
    "test_distributed.py": "device_runs",  # device_runs, resumed_runs
    "test_notebooks.py": "real_mnist",  # quick_runs, real_diffusion_run, notebook_runs
    "test_real_mnist.py": "real_mnist",
    "test_reproduce.py": "real_mnist",
}


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, when it is installed
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist (`-n 2`, pyproject's default) sends each group of SHARED_RUNS to one worker,
    so that its runs are trained once per session, the two largest groups first (xdist's
    default reordering: most tests first), and every other test on its own to whichever worker
    is free. (xdist's own `--dist loadgroup` marks do not reach pytest 9's node ids.)"""
    from xdist.scheduler import LoadScopeScheduling

    class SharedRunsScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return SHARED_RUNS.get(Path(nodeid.split("::")[0]).name, nodeid)

    return SharedRunsScheduling(config, log)


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
TINY_UNET = {  # one halving, one block per level: the cheapest U-Net to compile and run
    "model.features": 8,
    "model.channel_multipliers": (1, 2),
    "model.blocks_per_level": 1,
    "model.groups": 4,
}
FAMILIES["diffusion"] = (  # conditional with label dropout and guidance: every random draw
    "diffusion_config",
    {
        **TINY_UNET,
        "model.num_classes": 10,
        "task.guidance_scale": 2.0,
        "task.sampler": "ddpm",  # stochastic: its fresh noise too
        "task.eval_samples": 32,
        "task.final_eval_samples": 64,
        "task.eval_steps": 2,
        "task.sample_steps": 3,
        **_optimizer_settings("optimizer"),
    },
)
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
        f"from gen_jax.recipes import {config_function}\n\n\n"
        f"def get_config():\n    config = {config_function}()\n{lines}\n    return config\n"
    )
    return path


@pytest.fixture
def experiment(tmp_path):
    """Factory: `experiment(**overrides)` writes a tiny experiment file and returns its path."""
    return lambda name="tiny.py", **overrides: write_experiment(tmp_path / name, **overrides)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Factory: `tiny_run(family, **overrides)` is the workdir of a tiny run of `write_experiment`
    on mocked MNIST, trained in this process once per session for each family and overrides.
    Several test files read the same runs; a test that changes one works on a copy
    (`copied_run`)."""
    from gen_jax import config as config_lib
    from gen_jax import train

    made = {}

    def train_once(family: str = "classifier", **overrides) -> Path:
        key = (family, tuple(sorted(overrides.items())))
        if key not in made:
            root = tmp_path_factory.mktemp(f"tiny_{family}")
            config = config_lib.load_experiment(
                write_experiment(root / "tiny.py", family, **overrides)
            )
            with _mock_mnist():
                train.run(config, root / "run")
            made[key] = root / "run"
        return made[key]

    return train_once


def assert_trees_equal(a, b) -> None:
    """Two pytrees of the same structure whose leaves are equal, bit for bit."""
    import jax
    import numpy as np

    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def copied_run(run: Path, destination: Path) -> Path:
    """A copy of the run in `run` at `destination`, for a test that changes it."""
    shutil.copytree(run, destination, symlinks=True)
    return destination


@contextlib.contextmanager
def disk_full_after(size: int) -> Iterator[None]:
    """Writes past `size` bytes of any file fail in this process, as on a full disk (the soft
    RLIMIT_FSIZE, with SIGXFSZ ignored so the write raises instead of killing the process)."""
    import resource

    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


@contextlib.contextmanager
def locked_by_another_process(workdir: Path) -> Iterator[subprocess.Popen]:
    """A process of its own holds `workdir`'s trainer lock (`workdir_lock.held`) inside the block,
    as a running trainer does."""
    hold = (
        "import sys; from pathlib import Path; from gen_jax import workdir_lock\n"
        "with workdir_lock.held(Path(sys.argv[1])):\n"
        "    print('held', flush=True); sys.stdin.read()"
    )
    command = [sys.executable, "-c", hold, str(workdir)]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    with subprocess.Popen(command, cwd=REPO, **pipes) as holder:
        try:
            assert holder.stdout.readline() == "held\n"
            yield holder
        finally:
            holder.kill()


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


DEVICE_RUN_FAMILIES = ["classifier", "vae", "gan", "wgan_gp", "r1_gan", "diffusion"]
SCORED_FAMILIES = ["gan", "wgan_gp", "r1_gan", "diffusion"]  # in the classifier run's features


@pytest.fixture(scope="session")
def device_runs(tmp_path_factory):
    """Tiny runs of every family (10 steps, a checkpoint after each, the GANs scored with the
    classifier run), trained once per session: `one_device/FAMILY` in one single-device process,
    `eight_devices/FAMILY` in one process of 8 fake devices, which also writes a 16-sample grid of
    the vae, the gan and the diffusion model to `eight_devices/FAMILY.png`. Returns the root
    folder, with the experiment files in `experiments/FAMILY.py`. Later runs that must meet these
    numbers (resumed, interrupted, loaded on one device) start from the same files."""
    root = tmp_path_factory.mktemp("device_runs")
    settings = {"train.checkpoint_every": 1, "train.keep_checkpoints": 3}  # 10 steps
    classifier = root / "one_device" / "classifier"
    experiment = lambda family: root / "experiments" / f"{family}.py"
    (root / "experiments").mkdir()
    for family in DEVICE_RUN_FAMILIES:
        scored = {"task.classifier_workdir": str(classifier)} if family in SCORED_FAMILIES else {}
        write_experiment(experiment(family), family, **settings, **scored)

    def trainings(folder: str) -> list[str]:  # the classifier first: the GANs read its features
        return chained(
            ["train", str(experiment(family)), "--workdir", str(root / folder / family)]
            for family in DEVICE_RUN_FAMILIES
        )

    check_call_mocked_cli(trainings("one_device"), timeout=900)
    eight = root / "eight_devices"
    grids = chained(
        ["sample", str(eight / family), "--num", "16", "--out", str(eight / f"{family}.png")]
        for family in ("vae", "gan", "diffusion")
    )
    check_call_mocked_cli([*trainings("eight_devices"), THEN, *grids], devices=8, timeout=900)
    return root


def chained(commands) -> list[str]:
    """One argument list that runs `commands` one after the other in one mocked process."""
    return [arg for i, command in enumerate(commands) for arg in ([THEN] if i else []) + command]


def in_ci() -> bool:
    """Whether the tests run in CI (`CI` set, as CI services and .ci/run do)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def real_data_dir() -> str:
    """The prepared TFDS directory with real MNIST ($TFDS_DATA_DIR or ../shared/data). Elsewhere
    the real-data tests are skipped, but in CI missing data is an error: a green CI run has run
    its learning tests, the quick reproduction and the notebooks."""
    candidates = [
        os.environ.get("TFDS_DATA_DIR"),
        str(REPO.parent / "shared/data/tensorflow_datasets"),
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "mnist").is_dir():
            return str(Path(candidate).resolve())
    message = "real MNIST not found: set TFDS_DATA_DIR (see ../shared/data/README.md)"
    if in_ci():
        pytest.fail(f"{message}; in CI the real-data tests must run", pytrace=False)
    pytest.skip(message)


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


REAL_DIFFUSION = [  # experiments/mnist_cflow.py with the tiny U-Net, 200 steps on the real MNIST
    *(f"--config.{key}={value}" for key, value in TINY_UNET.items()),
    "--config.train.num_steps=200",
    "--config.optimizer.learning_rate=0.002",
    "--config.optimizer.warmup_steps=20",
    "--config.data.batch_size=32",
    "--config.task.final_eval_samples=500",
    "--config.task.sampler=euler",  # one network evaluation per step, unguided: cheap to sample
    "--config.task.sample_steps=8",
    "--config.task.guidance_scale=1.0",
    "--config.task.inception_samples=0",  # the file's 10k Inception-v3 samples: hours here
]


@pytest.fixture(scope="session")
def real_diffusion_run(real_data_dir, quick_runs, tmp_path_factory) -> tuple[Path, list[str]]:
    """A short class-conditional flow-matching run on the real MNIST, scored in the quick
    classifier run's features, trained once: (its workdir, the overrides that made it)."""
    from gen_jax import config as config_lib
    from gen_jax import train

    _, quick, _ = quick_runs
    overrides = [*REAL_DIFFUSION, f"--config.task.classifier_workdir={quick / 'mnist_cnn'}"]
    config = config_lib.load_experiment(REPO / "experiments" / "mnist_cflow.py")
    config_lib.apply_overrides(config, overrides)
    workdir = tmp_path_factory.mktemp("real_diffusion") / "mnist_cflow"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TFDS_DATA_DIR", real_data_dir)
        train.run(config, workdir)
    return workdir, overrides


def make_image_folder(
    root: Path,
    splits: dict[str, int],
    shape: tuple[int, int, int] = (12, 12, 3),
    classes: tuple[str, ...] = ("cat", "dog", "owl"),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """`root/<split>/<class>/NNN.png` (unlabelled `root/<split>/NNN.png` when `classes` is
    empty) of random uint8 images, `count` per split dealt round-robin to the classes; returns
    each split's images in the order a labelled listing sorts them (class, then file name)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for split, count in splits.items():
        images = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        for i, image in enumerate(images):
            folder = root / split / classes[i % len(classes)] if classes else root / split
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0] if shape[-1] == 1 else image).save(
                folder / f"{i:03d}.png"
            )
        order = (
            sorted(range(count), key=lambda i: (i % len(classes), i)) if classes else range(count)
        )
        written[split] = images[list(order)]
    return written
