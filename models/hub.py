"""Where ``edgescale pull`` gets a model: a source string, and Hugging Face through ``huggingface_hub``.

Sources: ``hf:ORG/REPO[@REVISION][:FILE|:QUANT]``, an ``https://`` (or ``http://``) URL of a
GGUF, or a local path. For Hugging Face, the hub protocol is ``huggingface_hub``'s: the repo's
file list (``HfApi.list_repo_tree``), the file's metadata (``get_hf_file_metadata``: the
ETag, which is the sha256 of an LFS file, its size and commit), ``HF_ENDPOINT`` for mirrors and
``HF_TOKEN`` for gated repos. The bytes then travel through ``models.download`` (huggingface_hub
2.x deletes its partial file when a download is interrupted; edgescale keeps one to resume).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgescale.errors import DownloadFailed, UsageError
from edgescale.models.download import Remote

# The quant chosen when a repo holds several GGUFs and the source names none: the common
# 4-bit default of llama.cpp's tools, then the ones llama.cpp repacks for x86 and ARM kernels.
PREFERRED_QUANTS = ("Q4_K_M", "Q4_0", "Q4_K_S", "Q5_K_M", "Q8_0")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class Source:
    kind: str  # "hf", "url" or "path"
    text: str  # as given
    repo: str | None = None
    revision: str | None = None
    file: str | None = None  # a file name in the repo
    quant: str | None = None  # a quant type to choose the file by (upper case)
    url: str | None = None
    path: Path | None = None


def parse_source(text: str) -> Source:
    raw = text.strip()
    if raw.startswith("hf:"):
        body = raw[3:]
        repo_part, _, pick = body.partition(":")
        repo, _, revision = repo_part.partition("@")
        if not _REPO.fullmatch(repo):
            raise UsageError(f"{raw!r}: expected hf:ORG/REPO[@REVISION][:FILE.gguf|:QUANT]")
        if pick.lower().endswith(".gguf"):
            return Source("hf", raw, repo=repo, revision=revision or None, file=pick)
        if pick and not re.fullmatch(r"[A-Za-z0-9_]+", pick):
            raise UsageError(f"{raw!r}: {pick!r} is neither a .gguf file name nor a quant type such as Q4_K_M")
        return Source("hf", raw, repo=repo, revision=revision or None, quant=pick.upper() or None)
    if raw.startswith(("https://", "http://")):
        parts = urlsplit(raw)
        if not parts.netloc:
            raise UsageError(f"{raw!r}: not a URL")
        return Source("url", raw, url=raw, file=Path(parts.path).name or "model.gguf")
    path = Path(raw).expanduser()
    if not path.is_file():
        raise UsageError(f"{raw!r}: not hf:ORG/REPO, an https:// URL, or a file that exists")
    return Source("path", raw, path=path, file=path.name)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"


def _quant_of(filename: str) -> str | None:
    stem = Path(filename).name[: -len(".gguf")] if filename.lower().endswith(".gguf") else filename
    found = [q for q in re.split(r"[-.]", stem) if re.fullmatch(r"(?i)(i?q\d\w*|f16|bf16|f32)", q)]
    return found[-1].upper() if found else None


def choose_file(files: dict[str, int | None], src: Source) -> tuple[str, list[str]]:
    """The GGUF to pull from a repo's files (name -> size) and the other GGUFs there."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    if not ggufs:
        raise DownloadFailed(f"{src.repo}: the repository holds no .gguf file")
    if src.quant:
        hits = [f for f in ggufs if _quant_of(f) == src.quant]
        if not hits:
            have = sorted({q for q in map(_quant_of, ggufs) if q})
            raise UsageError(f"{src.repo}: no GGUF of quant {src.quant} "
                             f"(it has: {', '.join(have) or ', '.join(ggufs)})")
    else:
        hits = next(([f for f in ggufs if _quant_of(f) == q] for q in PREFERRED_QUANTS
                     if any(_quant_of(f) == q for f in ggufs)), ggufs if len(ggufs) == 1 else [])
        if not hits:
            raise UsageError(f"{src.repo} holds several GGUFs and none of {', '.join(PREFERRED_QUANTS)}: name one, "
                             f"e.g. hf:{src.repo}:{ggufs[0]} (files: {', '.join(ggufs)})")
    whole = [f for f in hits if not _SPLIT.search(f)]
    if not whole:
        raise UsageError(f"{hits[0]} is split in parts; split GGUFs are not supported by pull yet "
                         "(download the parts and merge them with llama.cpp's gguf-split --merge)")
    if len(whole) > 1:
        raise UsageError(f"{src.repo}: several files match ({', '.join(whole)}): name one as hf:{src.repo}:FILE")
    return whole[0], [f for f in ggufs if f != whole[0]]


@dataclass(frozen=True)
class HubFile:
    repo: str
    file: str
    revision: str | None  # the commit the file was read at
    remote: Remote
    sha256: str | None  # from the hub (the LFS ETag), when it gave one
    others: tuple[str, ...]  # the repo's other GGUFs (when the file was chosen)

    @property
    def source(self) -> str:
        return f"hf:{self.repo}:{self.file}"


def _hub_error(what: str, exc: Exception) -> DownloadFailed:
    text = " ".join(str(exc).split())
    return DownloadFailed(f"{what}: {type(exc).__name__}: {text[:300]}")


def resolve_hf(src: Source) -> HubFile:
    """Look a Hugging Face source up (network): which file, where its bytes are, its sha256."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    assert src.repo is not None
    base = endpoint()
    others: tuple[str, ...] = ()
    file = src.file
    try:
        if file is None:
            tree = HfApi(endpoint=base).list_repo_tree(src.repo, revision=src.revision, recursive=True)
            files = {e.path: getattr(e, "size", None) for e in tree if hasattr(e, "size")}
            file, rest = choose_file(files, src)
            others = tuple(rest)
        url = hf_hub_url(src.repo, file, revision=src.revision, endpoint=base)
        headers = build_hf_headers()
        meta = get_hf_file_metadata(url, headers=None, endpoint=base)
    except (UsageError, DownloadFailed):
        raise
    except Exception as exc:  # noqa: BLE001  (the hub library's and its HTTP client's errors)
        raise _hub_error(f"hf:{src.repo}" + (f":{file}" if file else ""), exc) from None
    location = meta.location or url
    same_host = urlsplit(location).netloc == urlsplit(base).netloc
    sent = tuple((k, v) for k, v in headers.items() if same_host or k.lower() != "authorization")
    etag = meta.etag
    sha = etag.lower() if etag and _SHA256.fullmatch(etag.lower()) else None
    return HubFile(repo=src.repo, file=file, revision=meta.commit_hash,
                   remote=Remote(url=location, size=meta.size, etag=etag, headers=sent), sha256=sha, others=others)
