"""What `edgescale pull` costs beyond the transfer: the packaged GGUF from a loopback hub mirror.

Side by side, alternating, best of ``--runs``: a raw streamed httpx GET of the file into
/dev/null (the transfer alone), and ``models.pull.pull`` of the same file into a fresh store
(the hub lookups, the transfer to disk, the sha256, the GGUF validation, the manifest).

    python bench/pull_speed.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.hf_mirror import Mirror, MirrorFile  # noqa: E402

REPO, FILE = "bench/SmolLM2-GGUF", "SmolLM2-135M-Instruct-Q4_K_M.gguf"


def raw_get(url: str) -> float:
    import httpx

    t0 = time.perf_counter()
    with httpx.stream("GET", url, headers={"Accept-Encoding": "identity"}) as r, open(os.devnull, "wb") as out:
        for chunk in r.iter_bytes(1 << 20):
            out.write(chunk)
    return time.perf_counter() - t0


def one_pull(store: Path) -> float:
    from edgescale.models.pull import pull

    shutil.rmtree(store, ignore_errors=True)
    t0 = time.perf_counter()
    pull(f"hf:{REPO}:{FILE}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from edgescale.models.catalog import resolve_model

    data = resolve_model("smollm2-135m").read_bytes()
    mirror = Mirror(repos={REPO: {FILE: MirrorFile(data)}}).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["HF_ENDPOINT"] = mirror.url
            os.environ["EDGESCALE_MODELS"] = str(Path(tmp) / "store")
            url = f"{mirror.url}/{REPO}/resolve/main/{FILE}"
            raw, full = [], []
            for _ in range(args.runs):
                raw.append(raw_get(url))
                full.append(one_pull(Path(tmp) / "store"))
    finally:
        mirror.stop()
    mb = len(data) / 1e6
    print(f"{mb:.1f} MB over loopback, best of {args.runs}: raw GET {min(raw):.2f} s ({mb / min(raw):.0f} MB/s); "
          f"pull {min(full):.2f} s ({mb / min(full):.0f} MB/s); pull / raw = {min(full) / min(raw):.2f}x")


if __name__ == "__main__":
    main()
