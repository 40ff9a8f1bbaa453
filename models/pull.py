"""``edgescale pull``: a model from Hugging Face, a URL or a local file into the store.

The order, so that nothing unusable is ever registered: refuse in offline mode; look the
source up; check the name and the free disk space; download (resumable, ``models.download``);
check the sha256 (the hub's LFS ETag, or ``--sha256``), deleting the file on a mismatch;
validate it with edgescale's GGUF reader (``models.gguf_file``), deleting a file that is not a
usable GGUF; write the manifest (``models.store``). Only ``pull`` touches the network.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from edgescale.errors import ChecksumMismatch, DownloadFailed, InvalidModelFile, UsageError
from edgescale.models.catalog import find_entry
from edgescale.models.download import Remote, check_space, fetch, part_path, partial_bytes, sha256_of
from edgescale.models.hub import Source, parse_source, resolve_hf
from edgescale.models.info import read_model_info
from edgescale.models.store import (
    PulledModel,
    check_name,
    find_pulled,
    locked,
    model_folder,
    name_for_file,
    new_manifest,
    pulled_models,
    register,
)

Progress = Callable[[str, int, "int | None"], None]  # (phase, bytes done, total)
_TRUE = {"1", "true", "yes", "on"}


def offline_reason() -> str | None:
    """The environment variable that forbids the network, if one does."""
    for var in ("EDGESCALE_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    return None


@dataclass(frozen=True)
class PullResult:
    model: PulledModel
    downloaded: int  # bytes transferred by this call (0: it was in the store already, or imported)
    resumed_from: int  # bytes of a partial file this call started from
    others: tuple[str, ...] = ()  # the repo's other GGUFs, when the file was chosen for the user


def _no_progress(phase: str, done: int, total: int | None) -> None:
    pass


def pull(source: str, *, name: str | None = None, sha256: str | None = None, force: bool = False,
         progress: Progress = _no_progress) -> PullResult:
    """Bring ``source`` into the store and return it (see the module's docstring for the order)."""
    src = parse_source(source)
    want_sha = _check_sha(sha256)
    if name is not None and find_entry(check_name(name)) is not None:
        raise UsageError(f"{name!r} is a catalog model's name: choose another with --name")
    if src.kind == "path":
        return _import_file(src, name, want_sha, force, progress)
    _need_network_libraries()
    reason = offline_reason()
    if reason is not None:
        have = find_pulled(name or src.text)
        if have is not None and not force:
            return PullResult(have, 0, 0)
        raise DownloadFailed(f"offline mode ({reason}): pulling {src.text} needs the network; unset it to download "
                             "(pulled models: `edgescale models`)")
    if src.kind == "hf":
        hub = resolve_hf(src)
        remote, file, canonical, revision, others = hub.remote, hub.file, hub.source, hub.revision, hub.others
        if want_sha is not None and hub.sha256 is not None and want_sha != hub.sha256:
            raise ChecksumMismatch(f"{canonical}: --sha256 {want_sha} is not the hub's sha256 {hub.sha256}")
        want_sha = want_sha or hub.sha256
    else:
        remote, file, canonical, revision, others = _url_remote(src), src.file or "model.gguf", src.text, None, ()
    model_name = _store_name(name, file, canonical, force)
    existing = find_pulled(model_name)
    if existing is not None and not force and existing.source == canonical and existing.etag == remote.etag:
        return PullResult(existing, 0, 0, others)
    folder = model_folder(model_name)
    target = folder / Path(file).name
    with locked(folder):
        again = find_pulled(model_name)  # another pull may have finished it while this one waited
        if again is not None and not force and again.source == canonical and again.etag == remote.etag:
            return PullResult(again, 0, 0, others)
        if force or (existing is not None and existing.etag != remote.etag):
            target.unlink(missing_ok=True)
        start = partial_bytes(target)
        fetch(remote, target, progress=lambda done, total: progress("download", done, total))
        got = _checked(target, want_sha, canonical, progress)
        _validated(target, canonical)
        model = new_manifest(model_name, target, source=canonical, sha256=got, revision=revision, etag=remote.etag)
        model = register(replace(model, request=src.text))
    return PullResult(model, target.stat().st_size - start, start, others)


def _need_network_libraries() -> None:
    import importlib.util

    missing = [m for m in ("httpx", "huggingface_hub") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"pull needs {' and '.join(missing)}: pip install 'edgescale[pull]'")


def _check_sha(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise UsageError(f"--sha256 {sha256!r}: expected 64 hex digits")
    return value


def _url_remote(src: Source) -> Remote:
    """HEAD the URL for its size and ETag (a server that refuses HEAD: both unknown)."""
    import httpx

    assert src.url is not None
    try:
        with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0)) as client:
            r = client.head(src.url, headers={"Accept-Encoding": "identity"})
    except httpx.HTTPError as exc:
        raise DownloadFailed(f"{src.url}: {type(exc).__name__}: {exc}") from None
    if r.status_code >= 400 and r.status_code not in (405, 501):
        raise DownloadFailed(f"{src.url}: HTTP {r.status_code} {r.reason_phrase}")
    size = r.headers.get("Content-Length") if r.status_code < 400 else None
    etag = r.headers.get("ETag") if r.status_code < 400 else None
    return Remote(url=str(r.url) if r.status_code < 400 else src.url,
                  size=int(size) if size and size.isdigit() else None, etag=etag)


def _store_name(name: str | None, file: str, source: str, force: bool) -> str:
    chosen = check_name(name) if name is not None else name_for_file(file)
    if find_entry(chosen) is not None:
        raise UsageError(f"{chosen!r} is a catalog model's name: choose another with --name")
    taken = next((m for m in pulled_models() if m.name == chosen), None)
    if taken is not None and taken.source != source and not force:
        raise UsageError(f"a pulled model is already named {chosen!r} (from {taken.source}): choose another "
                         f"with --name, or `edgescale models rm {chosen}`")
    return chosen


def _checked(target: Path, want: str | None, source: str, progress: Progress) -> str:
    got = sha256_of(target, lambda done, total: progress("sha256", done, total))
    if want is not None and got != want:
        _discard(target)
        raise ChecksumMismatch(f"{source}: sha256 mismatch: expected {want}, got {got}; the file was deleted")
    return got


def _validated(target: Path, source: str) -> None:
    try:
        read_model_info(target)
    except InvalidModelFile as exc:
        _discard(target)
        raise InvalidModelFile(f"{source}: refused, not a usable GGUF: {exc}; the file was deleted") from None


def _discard(target: Path) -> None:
    """Delete a refused file and its partial download (and the folder when nothing else is in it)."""
    target.unlink(missing_ok=True)
    part = part_path(target)
    part.unlink(missing_ok=True)
    part.with_name(part.name + ".json").unlink(missing_ok=True)
    folder = target.parent
    if folder.is_dir() and all(p.name == ".lock" for p in folder.iterdir()):
        shutil.rmtree(folder)


def _import_file(src: Source, name: str | None, want_sha: str | None, force: bool, progress: Progress) -> PullResult:
    """A local GGUF into the store: validated first, then hard-linked (or copied) and checksummed."""
    assert src.path is not None
    try:
        read_model_info(src.path)
    except InvalidModelFile as exc:
        raise InvalidModelFile(f"{src.text}: refused, not a usable GGUF: {exc}") from None
    canonical = str(src.path.resolve())
    model_name = _store_name(name, src.path.name, canonical, force)
    folder = model_folder(model_name)
    target = folder / src.path.name
    folder.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(src.path, target)
    except OSError:
        check_space(folder, src.path.stat().st_size)
        tmp = part_path(target)
        shutil.copyfile(src.path, tmp)
        tmp.replace(target)
    got = _checked(target, want_sha, src.text, progress)
    model = register(replace(new_manifest(model_name, target, source=canonical, sha256=got), request=src.text))
    return PullResult(model, 0, 0)
