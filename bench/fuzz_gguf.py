"""Fuzz the GGUF header reader: mutated bytes of a real model's header, for a while.

Each iteration flips 1 to 8 bytes (most of them in the first KiB, where the
counts and the first records are; some in the first 64 KiB and anywhere in the
header) and sometimes cuts the header short, writes it with a sparse hole to
the real file size, and reads the model's metadata. Every outcome must be a
ModelInfo or a clean InvalidModelFile; anything else (another exception, or a
read slower than --hang seconds) is printed with its mutation and counted.

    python bench/fuzz_gguf.py [--model smollm2-135m] [--seconds 600] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from edgescale.errors import InvalidModelFile
from edgescale.models.catalog import resolve_model
from edgescale.models.gguf_file import read_header
from edgescale.models.info import model_info_from_header


def mutation(rng: random.Random, n: int) -> tuple[list[tuple[int, int]], int | None]:
    edits = []
    for _ in range(rng.randint(1, 8)):
        zone = rng.random()
        top = 1024 if zone < 0.6 else 65536 if zone < 0.9 else n
        edits.append((rng.randrange(min(top, n)), rng.randrange(256)))
    cut = rng.randrange(min(n, 65536)) if rng.random() < 0.15 else None
    return edits, cut


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hang", type=float, default=2.0, help="a read slower than this counts as a hang")
    args = ap.parse_args()
    path = resolve_model(args.model)
    header = read_header(path)
    with path.open("rb") as fh:
        head = fh.read(min(t.offset for t in header.tensors))
    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()
    failures = 0
    slowest = 0.0
    t_end = time.monotonic() + args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "mutant.gguf"
        while time.monotonic() < t_end:
            edits, cut = mutation(rng, len(head))
            buf = bytearray(head)
            for pos, value in edits:
                buf[pos] = value
            data = bytes(buf[:cut] if cut is not None else buf)
            with target.open("wb") as fh:
                fh.write(data)
                fh.truncate(max(header.file_size, len(data)))
            t0 = time.perf_counter()
            try:
                model_info_from_header(read_header(target))
                outcomes["model"] += 1
            except InvalidModelFile as exc:
                outcomes["InvalidModelFile"] += 1
                if "\n" in str(exc):
                    failures += 1
                    print(f"multi-line error for edits={edits} cut={cut}: {exc!r}")
            except Exception:  # noqa: BLE001  (what the fuzzer is looking for)
                failures += 1
                outcomes["crash"] += 1
                print(f"crash for edits={edits} cut={cut}:\n{traceback.format_exc()}")
            took = time.perf_counter() - t0
            slowest = max(slowest, took)
            if took > args.hang:
                failures += 1
                outcomes["hang"] += 1
                print(f"slow read ({took:.1f} s) for edits={edits} cut={cut}")
    total = sum(outcomes.values()) - outcomes["hang"]
    print(f"{total} mutants of {path.name}'s {len(head)}-byte header in {args.seconds:.0f} s "
          f"(seed {args.seed}): {dict(outcomes)}; slowest read {slowest * 1000:.1f} ms; failures {failures}")


if __name__ == "__main__":
    main()
