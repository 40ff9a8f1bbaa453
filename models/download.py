"""Resumable downloads over HTTP(S) with httpx: what ``edgescale pull`` transfers.

The bytes go to ``<file>.part`` next to the target, with ``<file>.part.json`` naming the URL,
ETag and size they belong to. A cut connection is resumed at once with a ``Range`` request
(a few tries, the count reset whenever bytes arrive); Ctrl-C, a full disk or a dead network
leave the partial file, which the next call for the same URL, ETag and size resumes (a partial
of another version is discarded). Free space is checked before a transfer starts. The finished
file is renamed into place only when it has its full size.
"""

from __future__ import annotations

import errno
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgescale.errors import DiskFull, DownloadFailed

Progress = Callable[[int, "int | None"], None]  # (bytes on disk, total bytes if known)
SPACE_MARGIN = 16 << 20  # bytes kept free beyond the download itself
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """A file to fetch: its URL, its size and ETag when the server said them, request headers."""

    url: str
    size: int | None = None
    etag: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system holding ``folder`` (tests replace this to simulate a full disk)."""
    return shutil.disk_usage(folder).free


def check_space(folder: Path, need: int) -> None:
    free = free_bytes(folder)
    if need + SPACE_MARGIN > free:
        raise DiskFull(f"not enough disk space in {folder}: the download needs {mb(need)} more and "
                       f"{mb(free)} is free (edgescale keeps {mb(SPACE_MARGIN)} spare); free some space or "
                       "set EDGESCALE_MODELS to a bigger disk")


def part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _meta_path(target: Path) -> Path:
    return target.with_name(target.name + ".part.json")


def partial_bytes(target: Path) -> int:
    part = part_path(target)
    return part.stat().st_size if part.is_file() else 0


def _keep_or_discard(remote: Remote, target: Path) -> None:
    """Keep a partial file only if it belongs to this URL, ETag and size."""
    meta, part = _meta_path(target), part_path(target)
    want = {"url": remote.url, "etag": remote.etag, "size": remote.size}
    try:
        same = json.loads(meta.read_text(encoding="utf-8")) == want
    except (OSError, ValueError):
        same = False
    if not same:
        part.unlink(missing_ok=True)
        meta.write_text(json.dumps(want), encoding="utf-8")


def fetch(remote: Remote, target: Path, *, progress: Progress | None = None, retries: int = 5,
          timeout_s: float = 60.0) -> Path:
    """Download ``remote`` to ``target`` (resuming a partial file), return ``target``."""
    import httpx

    target.parent.mkdir(parents=True, exist_ok=True)
    _keep_or_discard(remote, target)
    part = part_path(target)
    tries = 0
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 15.0))
    with httpx.Client(follow_redirects=True, timeout=timeout, headers=dict(remote.headers)) as client:
        while True:
            have = partial_bytes(target)
            if remote.size is not None:
                if have > remote.size:  # not this file's bytes
                    part.unlink()
                    have = 0
                if have == remote.size:
                    break
                check_space(target.parent, remote.size - have)
            try:
                done = _transfer(client, remote, part, have, progress)
            except (httpx.TransportError, httpx.StreamError) as exc:
                done = False
                failure: Exception = exc
            else:
                failure = DownloadFailed(f"{remote.url}: the server sent {mb(partial_bytes(target))} of "
                                         f"{mb(remote.size or 0)}")
            if done:
                break
            tries = 0 if partial_bytes(target) > have else tries + 1
            if tries >= retries:
                raise DownloadFailed(f"{remote.url}: {failure or 'no data'}; {mb(partial_bytes(target))} kept in "
                                     f"{part}: run the same command to resume") from None
            time.sleep(min(0.25 * 2**tries, 4.0))
    part.replace(target)
    _meta_path(target).unlink(missing_ok=True)
    return target


def _transfer(client: object, remote: Remote, part: Path, have: int, progress: Progress | None) -> bool:
    """One GET from ``have`` on; True when the file is complete (its size, or the response's end
    when the size is unknown)."""
    import httpx

    assert isinstance(client, httpx.Client)
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with client.stream("GET", remote.url, headers=headers) as response:
        if response.status_code == 416 and have and remote.size is None:
            return True  # nothing past what we have
        if response.status_code >= 400:
            raise DownloadFailed(f"{remote.url}: HTTP {response.status_code} {response.reason_phrase}")
        if have and response.status_code != 206:  # the server ignored the range: start over
            have = 0
        elif have and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            raise DownloadFailed(f"{remote.url}: the server resumed at another byte than {have} "
                                 f"({response.headers.get('Content-Range')!r})")
        try:
            with part.open("r+b" if have else "wb") as out:
                out.seek(have)
                out.truncate()
                for chunk in response.iter_bytes(_CHUNK):
                    out.write(chunk)
                    have += len(chunk)
                    if progress is not None:
                        progress(have, remote.size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFull(f"the disk filled up while writing {part} ({mb(have)} kept): free some space "
                               "and run the same command to resume") from None
            raise
    return remote.size is None or have == remote.size


def sha256_of(path: Path, progress: Progress | None = None) -> str:
    import hashlib

    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK * 8):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return digest.hexdigest()
