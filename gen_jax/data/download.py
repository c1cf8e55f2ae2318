"""Fetching a dataset's files over HTTP(S): from the first mirror that has them, resuming a cut
download where it stopped, checked against a sha256 before anything reads them.

A file goes to `<folder>/<name>.part` first and is renamed to `<folder>/<name>` only once its
checksum holds, so a file under its own name is always whole; a `.part` left by a cut connection
or a killed process is continued with an HTTP Range request. A file already in place (fetched
before, or put there by hand) is checked and used without a connection.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from gen_jax.errors import GenJaxError

MIRRORS_VARIABLE = "GEN_JAX_DATA_MIRRORS"  # comma-separated base URLs; "{name}": the dataset
TIMEOUT_S = 30  # per connection attempt and per read
ATTEMPTS = 3  # per mirror: a cut connection is resumed this many times
BLOCK = 1 << 20


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A file of a dataset and the sha256 of its content: of the file, or with `gunzipped`, of
    its decompressed bytes (for data that mirrors serve recompressed)."""

    name: str
    sha256: str
    size: int = 0  # bytes of the file as served, if known (the progress bar's total)
    gunzipped: bool = False

    def checksum(self, path: Path) -> str:
        digest = hashlib.sha256()
        opener = gzip.open if self.gunzipped else open
        try:
            with opener(path, "rb") as file:
                for block in iter(lambda: file.read(BLOCK), b""):
                    digest.update(block)
        except (OSError, EOFError):  # not gzip, or a truncated one
            return "unreadable"
        return digest.hexdigest()


class DownloadError(GenJaxError):
    """No mirror gave a file whose checksum holds."""


def mirrors(dataset: str, configured: tuple[str, ...], defaults: tuple[str, ...]) -> list[str]:
    """The base URLs to try, in order: `configured` (data.mirrors), else $GEN_JAX_DATA_MIRRORS,
    else the dataset's canonical locations; "{name}" in one is replaced by the dataset's name."""
    listed = configured or tuple(
        url.strip() for url in os.environ.get(MIRRORS_VARIABLE, "").split(",") if url.strip()
    )
    return [url.replace("{name}", dataset) for url in listed or defaults]


def fetch(file: RemoteFile, folder: Path, bases: list[str], manual: str) -> Path:
    """`folder/file.name`, downloaded from the first of `bases` that serves it whole and with its
    checksum, unless it is there already. Raises DownloadError naming each mirror's failure and,
    from `manual`, what to do by hand."""
    target = folder / file.name
    if target.is_file():
        if file.checksum(target) == file.sha256:
            return target
        print(f"gen-jax: {target} fails its checksum; fetching it again", file=sys.stderr)
        target.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{file.name}.part"
    failures = []
    for base in bases:
        url = base.rstrip("/") + "/" + file.name
        try:
            _download(url, partial, file.size)
        except (OSError, http.client.HTTPException) as error:  # URLError is an OSError
            failures.append(f"{url}: {_reason(error)}")
            continue
        if file.checksum(partial) == file.sha256:
            partial.rename(target)
            return target
        partial.unlink()
        failures.append(f"{url}: the file's sha256 is not {file.sha256} (a changed or bad copy)")
    raise DownloadError(
        f"cannot download {file.name}:\n  " + "\n  ".join(failures) + f"\n{manual}\n"
        f"Or list mirrors that serve it in ${MIRRORS_VARIABLE} or config.data.mirrors."
    )


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return f"{type(error).__name__}: {error}"


def _download(url: str, partial: Path, size: int) -> None:
    """Fetch `url` into `partial`, continuing what it holds; a connection cut mid-file is resumed
    up to ATTEMPTS times. Raises OSError (or an HTTPException) if it cannot finish."""
    for attempt in range(ATTEMPTS):
        try:
            _download_once(url, partial, size)
            return
        except (ConnectionError, TimeoutError, http.client.IncompleteRead) as error:
            if attempt == ATTEMPTS - 1 or not partial.exists():
                raise
            print(
                f"gen-jax: {url} cut at {partial.stat().st_size:,} bytes ({error}); resuming",
                file=sys.stderr,
            )


def _download_once(url: str, partial: Path, size: int) -> None:
    from tqdm import tqdm

    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "gen_jax"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        if have and response.status != 206:  # the server sends the whole file again
            have = 0
        length = int(response.headers.get("Content-Length") or 0)
        total = have + length if length else size or None
        print(
            f"gen-jax: downloading {url}" + (f" from byte {have:,}" if have else ""),
            file=sys.stderr,
        )
        with (
            open(partial, "ab" if have else "wb") as out,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                leave=False,
                desc=partial.name.removesuffix(".part"),
                file=sys.stderr,
            ) as bar,
        ):
            received = 0
            for block in iter(lambda: response.read(BLOCK), b""):
                out.write(block)
                received += len(block)
                bar.update(len(block))
    if length and received < length:
        raise ConnectionResetError(f"the connection closed after {received:,} of {length:,} bytes")
