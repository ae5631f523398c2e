"""Fetching a weights file from a model card's download source: resumable, checked, atomic.

Weights kept out of the repository (each release would add ~20 MB to every clone) live at a
release location named by the card. Tens of megabytes over a hospital network break off, so a
transfer writes into ``<file>.part`` and each retry, in the same run or the next, asks the server
for the missing bytes only (an HTTP Range request). Only a file whose SHA-256 is the card's is
renamed into place, in one step; one that does not match is deleted, since resuming it cannot
mend it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from asdseg.errors import ModelError
from asdseg.progress import ProgressCallback, tqdm_progress

#: Tries per run, each resuming where the previous one broke off.
ATTEMPTS = 3
#: Seconds to wait before the second try (twice that before the third...): a network that
#: dropped the connection often needs a moment.
RETRY_PAUSE_S = 1.0
#: Seconds without a byte before a try is given up (and resumed by the next).
TIMEOUT_S = 60
CHUNK = 1 << 16


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def partial_path(target: Path) -> Path:
    """Where the bytes of an unfinished download of ``target`` are kept until it is whole."""
    return target.with_name(target.name + ".part")


def _open(url: str, offset: int) -> http.client.HTTPResponse | None:
    """The server's response for the bytes from ``offset`` on; None when there are none left
    (416: a previous run fetched the whole file but stopped before checking it)."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        return urlopen(Request(url, headers=headers), timeout=TIMEOUT_S)
    except HTTPError as error:
        if error.code == 416 and offset:
            return None
        raise


def _transfer(url: str, part: Path, progress: ProgressCallback, stage: str) -> None:
    """Append the rest of ``url`` to ``part`` (all of it when the server ignores the Range
    request); an early end of the stream is an :class:`OSError`, so that the caller resumes."""
    offset = part.stat().st_size if part.exists() else 0
    response = _open(url, offset)
    if response is None:
        return
    with response:
        if response.status != 206:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else 0
        done = offset
        with writing_here():
            stream = open(part, "ab" if offset else "wb")  # noqa: SIM115 (closed by the with below)
        with stream:
            for block in iter(lambda: response.read(CHUNK), b""):
                with writing_here():
                    stream.write(block)
                done += len(block)
                progress(done, total, stage)
            with writing_here():
                stream.flush()
                os.fsync(stream.fileno())
    if done < total:
        raise ConnectionError(f"the connection closed after {done} of {total} bytes")


class LocalWriteError(Exception):
    """Writing the downloaded bytes here failed (a full disk, a file-size limit, no permission):
    unlike a broken connection, trying again will not help."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def writing_here() -> Iterator[None]:
    """A failed write to the local file is a :class:`LocalWriteError`, not a network failure."""
    try:
        yield
    except OSError as error:
        raise LocalWriteError(error) from error


def _retriable(error: Exception) -> bool:
    """Broken connections and server-side failures may pass; a refused URL (404, 403) will not."""
    return not isinstance(error, HTTPError) or error.code >= 500


def _fetch(url: str, target: Path, progress: ProgressCallback, stage: str) -> None:
    """:func:`_transfer` until the partial file of ``target`` is whole, at most :data:`ATTEMPTS`
    tries."""
    part = partial_path(target)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _transfer(url, part, progress, stage)
            return
        except LocalWriteError as failed:
            raise OSError(
                failed.error.errno, f"could not be written ({failed.error.strerror})", str(part)
            ) from failed
        except (OSError, http.client.HTTPException) as error:
            if attempt == ATTEMPTS or not _retriable(error):
                raise ModelError(_failure_message(url, target, error)) from error
        time.sleep(RETRY_PAUSE_S * attempt)


def _failure_message(url: str, target: Path, error: Exception) -> str:
    """What went wrong with ``url``, and what to do: run again (it resumes) or, where the server
    refuses the file, get a card that names a file it has."""
    part = partial_path(target)
    reason = error.reason if isinstance(error, URLError) and not isinstance(error, HTTPError) else error
    kept = part.stat().st_size if part.exists() else 0
    resume = f": it resumes from the {kept} bytes kept in {part}" if kept else ""
    what_to_do = (
        "The release location refuses it; get an up-to-date model card (a newer asdseg) or ask whoever "
        "publishes the model"
        if not _retriable(error)
        else f"Check the network connection (or proxy) and run again{resume}"
    )
    return f"cannot download {url}: {reason}. {what_to_do}; or download the file yourself to {target}."


def download_file(
    url: str,
    target: Path,
    sha256: str,
    progress: ProgressCallback | None = None,
    stage: str = "downloading weights",
) -> Path:
    """Download ``url`` into ``target``, resuming an earlier partial download, and rename it
    into place once its SHA-256 is ``sha256``. ``progress`` hears (bytes done, bytes in all or 0
    when the server does not say, ``stage``); by default a progress bar on stderr."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(target)
    close = None
    if progress is None:
        progress, close = tqdm_progress(stage, unit="B")
    try:
        _fetch(url, target, progress, stage)
    finally:
        if close is not None:
            close()
    actual = sha256_of(part)
    if actual != sha256:
        part.unlink()
        raise ModelError(
            f"the file downloaded from {url} does not match the model card (SHA-256 {actual[:12]}... "
            f"instead of {sha256[:12]}...), so it was deleted. The release location holds other "
            "weights than the card names: get an up-to-date model card or ask whoever publishes "
            "the model."
        )
    os.replace(part, target)
    return target
