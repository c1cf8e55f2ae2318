"""The pytest hooks (a compilation cache for the session, the scheduling of its shared runs on
pytest-xdist's workers) and the fixtures of the tests: mocked MNIST, tiny experiments and the runs
that several tests read, trained once per session. Plain helpers are in tests/helpers/."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.experiments import (
    DEVICE_RUN_FAMILIES,
    QUICK_FAMILIES,
    REAL_DIFFUSION,
    SCORED_FAMILIES,
    tiny_config,
    write_experiment,
)
from tests.helpers.processes import chained, check_call_mocked_cli
from tests.helpers.runs import REPO, in_ci
from tests.mocked_cli import THEN
from tests.mocked_cli import mock_mnist as _mock_mnist

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
    # no test downloads from the internet: a dataset without a prepared copy would be fetched
    # from its canonical host; here from a port with no server (tests serve their own mirror)
    os.environ["GEN_JAX_DATA_MIRRORS"] = "http://127.0.0.1:9/{name}/"
    settings = {"compilation_cache_dir": folder, "persistent_cache_min_compile_time_secs": 0}
    for name, value in settings.items():
        os.environ[f"JAX_{name.upper()}"] = str(value)  # for the processes the tests start
        jax.config.update(f"jax_{name}", value)


def pytest_unconfigure(config):
    """Remove the session's compiled programs."""
    if config.stash[XLA_CACHE]:
        shutil.rmtree(config.stash[XLA_CACHE], ignore_errors=True)


SESSION_RUNS = {"runs", "device_runs", "quick_runs", "real_diffusion_run"}  # fixtures that train


def pytest_collection_modifyitems(config, items):
    """The fast tier (`-m "not slow"`, README) leaves out every test marked slow and every test
    that reads the runs several families train for the session (SESSION_RUNS): they cost minutes
    whichever test comes first. A test is marked slow where it takes over ~3 s on the slowest CPU
    (AMD EPYC Zen 3), starts processes or reads real data for long."""
    for item in items:
        if SESSION_RUNS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
    "test_mesh.py": "mesh_layouts",  # the layouts its module fixture trains
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


@pytest.fixture
def experiment(tmp_path):
    """Factory: `experiment(**overrides)` writes a tiny experiment file and returns its path."""
    return lambda name="tiny.py", **overrides: write_experiment(tmp_path / name, **overrides)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Factory: `tiny_run(family, **overrides)` is the workdir `run` of a tiny run of
    `tiny_config(family, **overrides)` on mocked MNIST, beside its experiment file `tiny.py`,
    trained in this process once per session for each family and overrides. Several test files
    read the same runs; a test that changes one works on a copy (`copied_run`)."""
    from gen_jax import train

    made = {}

    def train_once(family: str = "classifier", **overrides) -> Path:
        key = (family, tuple(sorted(overrides.items())))
        if key not in made:
            root = tmp_path_factory.mktemp(f"tiny_{family}")
            write_experiment(root / "tiny.py", family, **overrides)  # for tests that run the CLI
            with _mock_mnist():
                train.run(tiny_config(family, **overrides), root / "run")
            made[key] = root / "run"
        return made[key]

    return train_once


@pytest.fixture
def mock_mnist():
    """MNIST-shaped random data for every `tfds.data_source` call inside the test."""
    with _mock_mnist():
        yield


@pytest.fixture(scope="session")
def device_runs(tmp_path_factory):
    """Tiny runs of every family (10 steps, one checkpoint at the end, the GANs scored with the
    classifier run), trained once per session: `one_device/FAMILY` in one single-device process,
    `eight_devices/FAMILY` in one process of 8 fake devices, which also writes a 16-sample grid of
    the vae, the gan and the diffusion model to `eight_devices/FAMILY.png`. Returns the root
    folder, with the experiment files in `experiments/FAMILY.py`. Later runs that must meet these
    numbers (resumed, interrupted, loaded on one device) start from the same files."""
    root = tmp_path_factory.mktemp("device_runs")
    settings = {"train.checkpoint_every": 0}  # the last step's only: a save costs ~0.3-1 s
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
