"""Fetching a dataset's files over HTTP(S): from the first mirror that has them, resuming a cut
download where it stopped, checked against a sha256 before anything reads them.

A file goes to `<folder>/<name>.part` first (beside `<name>.part.url`, the address it comes from)
and is renamed to `<folder>/<name>` only once its checksum holds, so a file under its own name is
always whole. A `.part` left by a cut connection or a killed process is continued from the same
address with an HTTP Range request; one from another address is started again, since mirrors may
serve other bytes of the same data. A file already in place (fetched before, or put there by
hand) is checked and used without a connection.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from gen_jax.errors import GenJaxError

MIRRORS_VARIABLE = "GEN_JAX_DATA_MIRRORS"  # comma-separated base URLs; "{name}": the dataset
TIMEOUT_S = 30  # per connection attempt and per read
ATTEMPTS = 3  # per mirror: connections tried, a cut one continued where it stopped
BLOCK = 1 << 20
UNREACHABLE = (ConnectionRefusedError, socket.gaierror)  # no server, no name: not tried again


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A file of a dataset and the sha256 of its content: of the file, or with `gunzipped`, of
    its decompressed bytes (for data that mirrors serve recompressed)."""

    name: str
    sha256: str
    size: int = 0  # bytes of the file as served, if known (the progress bar's total)
    gunzipped: bool = False

    def holds(self, path: Path) -> bool:
        """Whether `path` is this file: its content has the sha256."""
        digest = hashlib.sha256()
        opener = gzip.open if self.gunzipped else open
        try:
            with opener(path, "rb") as file:
                for block in iter(lambda: file.read(BLOCK), b""):
                    digest.update(block)
        except (OSError, EOFError, zlib.error):  # missing, not gzip, truncated or corrupt
            return False
        return digest.hexdigest() == self.sha256


class DownloadError(GenJaxError):
    """No mirror gave a file whose checksum holds."""


def mirrors(dataset: str, configured: tuple[str, ...], defaults: tuple[str, ...]) -> list[str]:
    """The base URLs to try, in order: `configured` (data.mirrors), else $GEN_JAX_DATA_MIRRORS,
    else the dataset's canonical locations; "{name}" in one is replaced by the dataset's name."""
    listed = configured or tuple(
        url.strip() for url in os.environ.get(MIRRORS_VARIABLE, "").split(",") if url.strip()
    )
    for url in listed:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise GenJaxError(
                f"the data mirror '{url}' (config.data.mirrors or ${MIRRORS_VARIABLE}) is not an "
                "http:// or https:// address"
            )
    return [url.replace("{name}", dataset) for url in listed or defaults]


def fetch(file: RemoteFile, folder: Path, bases: list[str], manual: str) -> Path:
    """`folder/file.name`, downloaded from the first of `bases` that serves it whole and with its
    checksum, unless it is there already. Raises DownloadError naming each mirror's failure and,
    from `manual`, what to do by hand."""
    target, partial = folder / file.name, folder / f"{file.name}.part"
    if target.is_file():
        if file.holds(target):
            return target
        damaged = target.rename(target.with_name(f"{file.name}.bad"))
        print(f"gen-jax: {target} fails its checksum (kept as {damaged}); fetching it again",
              file=sys.stderr)  # fmt: skip
    if file.holds(partial):  # complete, but killed before the rename
        return partial.rename(target)
    folder.mkdir(parents=True, exist_ok=True)
    failures = []
    for base in bases:
        url = base.rstrip("/") + "/" + file.name
        try:
            _download(url, partial, file.size)
        except (OSError, http.client.HTTPException) as error:  # URLError is an OSError
            failures.append(f"{url}: {_reason(error)}")
            continue
        whole = file.holds(partial)
        partial.with_name(f"{partial.name}.url").unlink()
        if whole:
            return partial.rename(target)
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
    """Fetch `url` into `partial`, continuing what it holds from that address: up to ATTEMPTS
    connections, a cut one continued, a refused one (HTTP 4xx) not tried again. Raises OSError
    (or an HTTPException) if it cannot finish."""
    for attempt in range(ATTEMPTS):
        try:
            _download_once(url, partial, size)
            return
        except urllib.error.HTTPError as error:
            if error.code == 416 and partial.exists():  # the .part is as long as the file, or
                partial.unlink()  # longer: start again from the first byte
            elif 400 <= error.code < 500 or attempt == ATTEMPTS - 1:
                raise
        except (OSError, http.client.HTTPException) as error:
            offline = isinstance(getattr(error, "reason", None), UNREACHABLE)
            if offline or attempt == ATTEMPTS - 1:
                raise
            have = partial.stat().st_size if partial.exists() else 0
            print(f"gen-jax: {url} failed at byte {have:,} ({_reason(error)}); trying again",
                  file=sys.stderr)  # fmt: skip
            time.sleep(2**attempt)


def _download_once(url: str, partial: Path, size: int) -> None:
    from tqdm import tqdm

    origin = partial.with_name(f"{partial.name}.url")
    same_origin = origin.is_file() and origin.read_text() == url
    have = partial.stat().st_size if partial.exists() and same_origin else 0
    origin.write_text(url)
    request = urllib.request.Request(url, headers={"User-Agent": "gen_jax"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        resumed = response.status == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            raise http.client.HTTPException(f"a partial answer that does not start at byte {have}")
        have = have if resumed else 0  # a server that ignores Range sends the whole file
        length = response.length or 0  # None where unknown or malformed
        print(f"gen-jax: downloading {url}" + (f" from byte {have:,}" if have else ""),
              file=sys.stderr)  # fmt: skip
        with (
            open(partial, "ab" if have else "wb") as out,
            tqdm(total=have + length or size or None, initial=have, unit="B", unit_scale=True,
                 desc=partial.name.removesuffix(".part"), disable=None, leave=False) as bar,
        ):  # fmt: skip
            received = 0
            for block in iter(lambda: response.read(BLOCK), b""):
                out.write(block)
                received += len(block)
                bar.update(len(block))
    if length and received < length:
        raise ConnectionResetError(f"the connection closed after {received:,} of {length:,} bytes")
