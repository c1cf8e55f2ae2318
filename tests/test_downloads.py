"""Datasets from their canonical files (gen_jax/data/download.py, canonical.py), fetched from a
local HTTP server on 127.0.0.1: real MNIST from ../shared/data, a small archive in CIFAR-10's
python format made here, and the failures: a wrong checksum, a connection cut mid-file, no
server."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import pickle
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from gen_jax import config as config_lib
from gen_jax import data
from gen_jax.data import canonical, download
from gen_jax.errors import GenJaxError


class Mirror:
    """A local HTTP server of `files` (URL path -> bytes) that honours Range requests (or, with
    `ignores_range`, sends the whole file), logs each request's path and Range header, and can
    cut a file's first response half-way."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_once: set[str] = set()
        self.ignores_range = False
        self.requests: list[tuple[str, str | None]] = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                mirror.requests.append((self.path, self.headers.get("Range")))
                body = mirror.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
                if mirror.ignores_range:
                    start = 0
                if start >= len(body) > 0:
                    self.send_error(416)  # as S3, GCS and nginx answer a range past the end
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path in mirror.cut_once:
                    mirror.cut_once.discard(self.path)
                    self.wfile.write(body[start : start + len(body) // 2])
                    self.close_connection = True  # the rest never comes
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        serve = lambda: self.server.serve_forever(poll_interval=0.05)
        threading.Thread(target=serve, daemon=True).start()


@pytest.fixture
def mirror():
    served = Mirror()
    yield served
    served.server.shutdown()
    served.server.server_close()


def closed_port() -> int:
    """A local port with no server (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def data_config(tmp_path: Path, name: str, mirrors: tuple[str, ...], **settings):
    config = config_lib.base_config().data
    config.update(
        {"name": name, "source": "download", "mirrors": mirrors, "cache_dir": str(tmp_path)}
    )
    config.update(settings)
    return config


def opened(config, split: str) -> data.Split:
    data.clear_cache()  # opened splits are kept per process: read these from disk
    return data.open_split(config, split)


def remote(body: bytes, name: str = "file.bin") -> download.RemoteFile:
    return download.RemoteFile(name, hashlib.sha256(body).hexdigest())


# ----------------------------------------------------------------------------- the downloads
def test_a_connection_cut_mid_file_resumes_with_a_range_request(mirror, tmp_path):
    body = np.random.default_rng(0).bytes(300_000)
    mirror.files["/file.bin"], mirror.cut_once = body, {"/file.bin"}
    path = download.fetch(remote(body), tmp_path, [mirror.url], manual="")
    assert path.read_bytes() == body and not (tmp_path / "file.bin.part").exists()
    assert mirror.requests == [("/file.bin", None), ("/file.bin", f"bytes={len(body) // 2}-")]


def test_a_partial_file_left_by_a_killed_process_is_continued(mirror, tmp_path):
    body = np.random.default_rng(1).bytes(100_000)
    mirror.files["/file.bin"] = body
    (tmp_path / "file.bin.part").write_bytes(body[:40_000])
    (tmp_path / "file.bin.part.url").write_text(f"{mirror.url}/file.bin")  # where it came from
    download.fetch(remote(body), tmp_path, [mirror.url], manual="")
    assert (tmp_path / "file.bin").read_bytes() == body
    assert mirror.requests == [("/file.bin", "bytes=40000-")]


def test_a_partial_file_is_fetched_anew_where_it_cannot_be_continued(mirror, tmp_path):
    body = np.random.default_rng(2).bytes(50_000)
    mirror.files["/file.bin"] = body
    part, origin = tmp_path / "file.bin.part", tmp_path / "file.bin.part.url"
    part.write_bytes(body[:10_000] + b"x" * 60_000)  # longer than the file: the server says 416
    origin.write_text(f"{mirror.url}/file.bin")
    download.fetch(remote(body), tmp_path, [mirror.url], manual="")
    assert (tmp_path / "file.bin").read_bytes() == body
    assert mirror.requests == [("/file.bin", "bytes=70000-"), ("/file.bin", None)]
    mirror.requests.clear()
    (tmp_path / "file.bin").unlink()
    part.write_bytes(body[:10_000])
    origin.write_text("http://another.mirror/file.bin")  # its bytes may differ: not continued
    download.fetch(remote(body), tmp_path, [mirror.url], manual="")
    assert mirror.requests == [("/file.bin", None)]
    mirror.requests.clear()
    (tmp_path / "file.bin").unlink()
    part.write_bytes(body[:10_000])
    origin.write_text(f"{mirror.url}/file.bin")
    mirror.ignores_range = True  # answers 200 and the whole file: written from the start
    download.fetch(remote(body), tmp_path, [mirror.url], manual="")
    assert (tmp_path / "file.bin").read_bytes() == body
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_a_complete_partial_file_is_used_without_a_connection(tmp_path):
    body = b"whole, but killed before its rename"
    (tmp_path / "file.bin.part").write_bytes(body)
    dead = [f"http://127.0.0.1:{closed_port()}"]
    assert download.fetch(remote(body), tmp_path, dead, "").read_bytes() == body


def test_a_wrong_checksum_tries_the_next_mirror_and_then_fails_leaving_no_file(mirror, tmp_path):
    body = b"the real file"
    mirror.files["/bad/file.bin"] = b"a changed file"
    with pytest.raises(download.DownloadError) as error:
        download.fetch(remote(body), tmp_path, [f"{mirror.url}/bad"], manual="put it here")
    assert "sha256 is not" in str(error.value) and "put it here" in str(error.value)
    assert list(tmp_path.iterdir()) == []  # neither the bad copy nor its .part
    mirror.files["/good/file.bin"] = body
    download.fetch(remote(body), tmp_path, [f"{mirror.url}/bad", f"{mirror.url}/good"], "")
    assert (tmp_path / "file.bin").read_bytes() == body


def test_a_file_put_in_place_by_hand_is_checked_and_used_without_a_connection(tmp_path):
    body = b"copied by hand"
    (tmp_path / "file.bin").write_bytes(body)
    dead = [f"http://127.0.0.1:{closed_port()}"]
    assert download.fetch(remote(body), tmp_path, dead, "").read_bytes() == body
    (tmp_path / "file.bin").write_bytes(b"damaged")  # fails its checksum: fetched again
    with pytest.raises(download.DownloadError, match="Connection refused"):
        download.fetch(remote(body), tmp_path, dead, "")
    assert (tmp_path / "file.bin.bad").read_bytes() == b"damaged"  # kept aside, not deleted
    gzipped = download.RemoteFile("file.gz", hashlib.sha256(body).hexdigest(), gunzipped=True)
    (tmp_path / "file.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(40))  # corrupt gzip data
    with pytest.raises(download.DownloadError, match="Connection refused"):
        download.fetch(gzipped, tmp_path, dead, "")
    (tmp_path / "file.gz").write_bytes(gzip.compress(body))  # recompressed: the same data
    assert download.fetch(gzipped, tmp_path, dead, "") == tmp_path / "file.gz"


def test_no_server_gives_one_error_that_says_where_to_put_the_files(tmp_path):
    config = data_config(tmp_path, "mnist", (f"http://127.0.0.1:{closed_port()}/{{name}}",))
    with pytest.raises(GenJaxError) as error:
        opened(config, "train")
    message = str(error.value)
    folder = tmp_path / "downloads" / "mnist"
    assert "train-images-idx3-ubyte.gz" in message and f"into {folder} by hand" in message
    assert "Connection refused" in message and "$GEN_JAX_DATA_MIRRORS" in message


def test_mirrors_come_from_the_config_then_the_environment_then_the_defaults(monkeypatch):
    monkeypatch.setenv(download.MIRRORS_VARIABLE, "http://127.0.0.1:1/{name}/, http://b")
    defaults = ("http://canonical/",)
    assert download.mirrors("mnist", ("http://c/",), defaults) == ["http://c/"]
    assert download.mirrors("mnist", (), defaults) == ["http://127.0.0.1:1/mnist/", "http://b"]
    monkeypatch.delenv(download.MIRRORS_VARIABLE)
    assert download.mirrors("mnist", (), defaults) == ["http://canonical/"]
    with pytest.raises(GenJaxError, match=r"'lab-mirror/mnist' .* is not an http"):
        download.mirrors("mnist", ("lab-mirror/mnist",), defaults)


# ----------------------------------------------------------------------------- MNIST
@pytest.mark.slow  # decodes and hashes 60,000 images of each copy
def test_mnist_downloaded_from_a_mirror_is_the_prepared_copy_in_idx_order(
    mirror, real_data_dir, tmp_path
):
    idx = Path(real_data_dir).parent / "mnist"
    for path in idx.glob("*.gz"):
        mirror.files[f"/mnist/{path.name}"] = path.read_bytes()
    assert len(mirror.files) == 4, f"{idx} should hold MNIST's four .gz files"
    config = data_config(tmp_path, "mnist", (f"{mirror.url}/{{name}}/",))
    train, test = opened(config, "train"), opened(config, "test")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.spec == data.DataSpec((28, 28, 1), tuple("0123456789"), True)
    first = train.read(np.arange(10))
    assert list(first["label"]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # ../shared/data/README.md
    assert list(test.read(np.arange(10))["label"]) == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert train.source.startswith("download:mnist") and train.identity.startswith("download/")

    prepared = config.copy_and_resolve_references()
    prepared.update({"source": "auto", "data_dir": real_data_dir})
    tfds_split = opened(prepared, "train")  # "auto": the prepared copy wins
    assert tfds_split.source.startswith("tfds:mnist")
    keys = lambda split: sorted(
        hashlib.sha1(image.tobytes() + bytes([label])).digest()
        for image, label in zip(*data.load_split(split, "train").values(), strict=True)
    )
    assert keys(config) == keys(prepared)  # the same examples, in another order

    mirror.server.shutdown()  # the second time reads the cache alone
    again = opened(config, "train").read(np.arange(10))
    np.testing.assert_array_equal(again["image"], first["image"])


def test_auto_falls_back_to_the_canonical_files_only_where_no_tfds_copy_is(mirror, tmp_path):
    empty = tmp_path / "no_tfds"
    empty.mkdir()
    config = data_config(tmp_path, "mnist", (f"{mirror.url}/{{name}}/",), data_dir=str(empty))
    config.source = "tfds"
    with pytest.raises(GenJaxError, match="has no mnist/ folder") as error:
        opened(config, "train")
    assert "canonical" not in str(error.value) and mirror.requests == []
    config.source = "auto"  # no server files: the download fails, and both reasons are said
    with pytest.raises(GenJaxError) as error:
        opened(config, "train")
    assert "has no mnist/ folder" in str(error.value) and "HTTP 404" in str(error.value)
    config.source = "elsewhere"
    with pytest.raises(GenJaxError, match=r"unknown data\.source 'elsewhere'"):
        opened(config, "train")
    (empty / "mnist").mkdir()  # a copy that is there but cannot be read: mend it, no download
    config.source, mirror.requests = "auto", []
    with pytest.raises(GenJaxError, match="cannot be read from") as error:
        opened(config, "train")
    assert "canonical" not in str(error.value) and mirror.requests == []


# ----------------------------------------------------------------------------- CIFAR-10
def cifar_archive(per_batch: int) -> tuple[bytes, dict[str, np.ndarray]]:
    """A cifar-10-python.tar.gz in the original's format (pickled dicts of rows of 3072 bytes,
    the red plane, then green, then blue), `per_batch` images in each of its six batches."""
    rng = np.random.default_rng(0)
    buffer, arrays = io.BytesIO(), {"train": [], "test": []}
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:

        def add(name: str, content: dict) -> None:
            raw = pickle.dumps(content, protocol=2)  # the original's (Python 2's) protocol
            member = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            member.size = len(raw)
            archive.addfile(member, io.BytesIO(raw))

        names = canonical.DATASETS["cifar10"].class_names
        add("batches.meta", {b"label_names": [n.encode() for n in names]})
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, per_batch).tolist()
            add(name, {b"batch_label": name.encode(), b"data": rows, b"labels": labels})
            arrays["test" if name == "test_batch" else "train"].append((rows, labels))
    split = lambda parts: (
        np.concatenate([r for r, _ in parts]),
        np.concatenate([np.asarray(l) for _, l in parts]),  # noqa: E741
    )
    return buffer.getvalue(), {k: split(v) for k, v in arrays.items()}


@pytest.fixture
def tiny_cifar(mirror, monkeypatch):
    """The canonical CIFAR-10 source, its one file replaced by a small archive (and its
    checksum) served by the local mirror."""
    archive, arrays = cifar_archive(per_batch=6)
    mirror.files["/cifar10/cifar-10-python.tar.gz"] = archive
    real = canonical.DATASETS["cifar10"]
    small = dataclasses.replace(
        real, files=(remote(archive, "cifar-10-python.tar.gz"),), mirrors=(f"{mirror.url}/cifar10",)
    )
    monkeypatch.setitem(canonical.DATASETS, "cifar10", small)
    monkeypatch.delenv(download.MIRRORS_VARIABLE, raising=False)  # the dataset's own mirror
    return arrays


def test_cifar10_from_the_python_pickle_archive(tiny_cifar, tmp_path):
    config = data_config(tmp_path, "cifar10", ())
    train, test = opened(config, "train"), opened(config, "test")
    assert (len(train), len(test)) == (30, 6)
    assert train.spec.image_shape == (32, 32, 3)
    assert train.spec.class_names[:3] == ("airplane", "automobile", "bird")
    rows, labels = tiny_cifar["train"]
    read = train.read(np.arange(30))
    np.testing.assert_array_equal(read["label"], labels)
    red, green, blue = rows[7, :1024], rows[7, 1024:2048], rows[7, 2048:]
    np.testing.assert_array_equal(read["image"][7, 0, :3], np.stack([red, green, blue], -1)[:3])
    np.testing.assert_array_equal(read["image"], rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    gray = opened(data_config(tmp_path, "cifar10", (), channels=1, image_size=16), "test")
    assert gray.spec.image_shape == (16, 16, 1) and gray.read([0])["image"].shape == (1, 16, 16, 1)


def test_a_pickle_that_would_run_code_is_refused():
    class Calls:
        def __reduce__(self):
            return (print, ("ran",))

    with pytest.raises(GenJaxError, match=r"asks for builtins\.print; refused"):
        canonical._ArraysOnly(io.BytesIO(pickle.dumps(Calls()))).load()


def test_the_canonical_airbench_variant_differs_from_the_jpeg_recipe_in_its_data_alone():
    from tests.helpers.runs import REPO

    jpeg = config_lib.load_experiment(REPO / "experiments/cifar10_airbench.py")
    canonical_config = config_lib.load_experiment(
        REPO / "experiments/cifar10_airbench_canonical.py"
    )
    differences = config_lib.changes(jpeg, canonical_config)
    assert set(differences) == {"data.folder", "data.name", "data.mean", "data.std"}
    assert canonical_config.data.name == "cifar10" and canonical_config.data.source == "auto"


def test_idx_reader_refuses_a_file_of_another_format(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + bytes(12)))
    with pytest.raises(GenJaxError, match="not an IDX file of unsigned bytes"):
        canonical.read_idx(path)
