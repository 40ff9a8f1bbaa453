"""Does the installed llama.cpp build run on this CPU, and which kernels does it use?

A llama.cpp binary built for another CPU (a wheel copied across a fleet, or a
native build with llama.cpp's AMX kernels on an AMX Xeon) dies with SIGILL the
moment it runs an instruction the CPU lacks, taking the Python process with it.
So the first time a build meets a CPU, a subprocess (``python -m
edgescale.devices.buildcheck``) loads llama.cpp, reports its system info and
devices and decodes a few tokens; how it ends is kept in edgescale's cache,
keyed by the library files and the CPU. A crash becomes a one-line
``BackendUnavailable`` naming the missing instructions and the rebuild command.
``EDGESCALE_BUILD_CHECK=0`` skips the check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgescale.devices.llama_build import (
    RECORD,
    cpu_signature,
    is_x86,
    lib_fingerprint,
    llama_lib_dir,
    signal_name,
)
from edgescale.errors import BackendUnavailable
from edgescale.models.catalog import cache_dir

CHECK_TOKENS = 8
PROBE_TIMEOUT_S = 300.0
REBUILD_HINT = ("rebuild llama.cpp for this machine: `bash scripts/install.sh --rebuild` "
                "(or `--portable` for one wheel that runs on every x86-64-v3 CPU)")

# ggml's CPU feature names (llama_print_system_info) -> devices.cpu_probe's names.
GGML_FEATURES: dict[str, str] = {
    "SSE3": "sse3",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX_VNNI": "avx_vnni",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512_vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
    "NEON": "neon",
    "FP16_VA": "fp16",
    "DOTPROD": "dotprod",
    "MATMUL_INT8": "i8mm",
    "SVE": "sve",
    "SME": "sme",
}
# CPU features that make llama.cpp's kernels faster when compiled in (x86 and ARM).
_ARM = frozenset({"neon", "fp16", "dotprod", "i8mm", "sve", "sme"})
FAST_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "neon", "dotprod", "i8mm")
_CPU_SECTION = re.compile(r"CPU\s*:(?P<body>[^:]*?)(?:\|\s*[A-Za-z][A-Za-z0-9_]*\s*:|$)")
_FLAG = re.compile(r"([A-Z][A-Z0-9_]*)\s*=\s*1\b")


def kernel_summary(system_info: str) -> str:
    """"CPU : AVX2 = 1 | REPACK = 1 | CUDA : ARCHS = 900 |" -> "CPU: AVX2 REPACK; CUDA: ARCHS=900"."""
    sections: list[tuple[str, list[str]]] = []
    for part in system_info.split("|"):
        name, colon, rest = part.partition(":")
        if colon and "=" not in name:
            sections.append((name.strip(), []))
            part = rest
        key, eq, value = part.partition("=")
        if eq and sections:
            key, value = key.strip(), value.strip()
            sections[-1][1].append(key if value == "1" else f"{key}={value}")
    return "; ".join(f"{name}: {' '.join(flags)}" for name, flags in sections) or system_info.strip()


def compiled_features(system_info: str) -> tuple[str, ...]:
    """ggml CPU features that are on in ``llama_print_system_info()``, as cpu_probe names."""
    m = _CPU_SECTION.search(system_info)
    if not m:
        return ()
    names = [GGML_FEATURES[f] for f in _FLAG.findall(m.group("body")) if f in GGML_FEATURES]
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Assessment:
    compiled: tuple[str, ...]  # instruction sets the build's kernels use
    missing: tuple[str, ...]  # compiled in, but this CPU lacks them: the build dies here
    unused: tuple[str, ...]  # this CPU has them, the build does not use them: slower than it could be
    amx: bool  # llama.cpp's AMX kernels are compiled in

    @property
    def verdict(self) -> str:
        if self.missing:
            return f"mismatch: the build uses {', '.join(self.missing)}, which this CPU lacks; {REBUILD_HINT}"
        if self.amx:
            return ("AMX kernels compiled in: llama.cpp's AMX path is known to die with SIGILL "
                    f"(tile permission on the main thread only); {REBUILD_HINT}")
        if self.unused:
            return (f"runs, but does not use {', '.join(self.unused)} of this CPU "
                    "(a portable build): `bash scripts/install.sh --rebuild` builds for this CPU")
        return "matches this CPU"


def assess(system_info: str, cpu_features: Sequence[str], arch: str) -> Assessment:
    """Compare the build's kernels with this CPU (``cpu_features`` as devices.cpu_probe reads them)."""
    have = set(cpu_features)
    compiled = compiled_features(system_info)
    x86 = is_x86(arch)
    # a feature of the other architecture family cannot be judged from this reading
    missing = tuple(f for f in compiled if f not in have and (f in _ARM) != x86) if have else ()
    unused = tuple(f for f in FAST_FEATURES if f in have and f not in compiled)
    return Assessment(compiled, missing, unused, "amx_int8" in compiled)


@dataclass(frozen=True)
class BuildReport:
    """What one probe of the installed llama.cpp found."""

    ok: bool  # loaded (and, when asked, decoded) without dying
    system_info: str = ""
    devices: tuple[str, ...] = ()  # ggml devices that loaded: "CPU: AMD EPYC", "CUDA0: NVIDIA H200"
    gpu_offload: bool = False
    decoded: bool = False  # a model decoded CHECK_TOKENS tokens
    crash: str = ""  # "SIGILL (illegal instruction)" when the probe died of a signal
    error: str = ""  # any other failure, one line
    version: str = ""


def report_from_dict(data: Mapping[str, Any]) -> BuildReport:
    known = {f.name for f in fields(BuildReport)}
    kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
    return BuildReport(**kw)


def build_key(lib: Path | None, cpu: str) -> str:
    blob = json.dumps({"lib": str(lib), "files": lib_fingerprint(lib), "cpu": cpu, "py": sys.executable},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_file(key: str) -> Path:
    return cache_dir() / "buildcheck" / f"{key}.json"


def run_probe(model: Path | None, *, timeout_s: float = PROBE_TIMEOUT_S) -> BuildReport:
    """Probe in a subprocess: a signal death is a crash, anything else an error."""
    cmd = [sys.executable, "-m", "edgescale.devices.buildcheck", "--json", "--no-cache"]
    if model is not None:
        cmd += ["--model", str(model)]
    env = dict(os.environ, EDGESCALE_BUILD_CHECK="0")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return BuildReport(False, error=f"the llama.cpp probe did not finish in {timeout_s:.0f} s")
    if proc.returncode < 0:
        crash = signal_name(proc.returncode)
        if model is not None:  # loading alone may work: then the report can name the kernels
            loaded = run_probe(None, timeout_s=timeout_s)
            return replace(loaded, ok=False, crash=crash, decoded=False)
        return BuildReport(False, crash=crash)
    lines = (proc.stdout or "").strip().splitlines()
    try:
        return report_from_dict(json.loads(lines[-1]))
    except (IndexError, ValueError, TypeError):
        err = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        return BuildReport(False, error=err[-1] if err else f"the llama.cpp probe exited {proc.returncode}")


def probe(model: Path | None = None, *, use_cache: bool = True) -> BuildReport:
    """The installed build on this CPU: cached after the first successful probe
    (with a model: after the first successful decode)."""
    key = build_key(llama_lib_dir(), cpu_signature())
    path = cache_file(key)
    if use_cache:
        try:
            cached = report_from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            cached = None
        if cached is not None and cached.ok and (cached.decoded or model is None):
            return cached
    report = run_probe(model)
    if report.ok and use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(asdict(report)) + "\n")
        except OSError:
            pass  # a read-only cache costs a probe per process, nothing else
    return report


def crash_message(report: BuildReport, cpu_features: Sequence[str], arch: str) -> str:
    missing = assess(report.system_info, cpu_features, arch).missing if report.system_info else ()
    what = f" (it uses {', '.join(missing)}, which this CPU lacks)" if missing else ""
    return f"llama.cpp dies on this CPU with {report.crash}{what}; {REBUILD_HINT}"


def ensure_runs(model: Path) -> None:
    """Raise BackendUnavailable instead of letting a build that crashes on this CPU
    take the process down (cached: one subprocess per build and CPU)."""
    if os.environ.get("EDGESCALE_BUILD_CHECK", "1") == "0":
        return
    report = probe(model)
    if report.crash:
        from edgescale.devices.cpu_probe import read_cpu

        cpu = read_cpu(platform.system())
        raise BackendUnavailable(crash_message(report, cpu.features, cpu.arch))


def installed_build() -> dict[str, Any] | None:
    """The record scripts/install.sh wrote for the llama.cpp build in this environment,
    or None when the installed libraries are not the ones it recorded (built elsewhere)."""
    try:
        record = json.loads((Path(sys.prefix) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("libs") != lib_fingerprint(llama_lib_dir()):
        return None
    return record


# -- the subprocess side -------------------------------------------------------------
def probe_in_process(model: Path | None) -> BuildReport:
    from edgescale.runtime import _llama_ffi as ffi

    be = ffi.backend()
    base = BuildReport(True, system_info=be.system_info(), devices=tuple(be.devices()),
                       gpu_offload=be.supports_gpu_offload(), version=be.version)
    if model is None:
        return base
    ffi.greedy_decode_check(model, CHECK_TOKENS)
    return BuildReport(**{**asdict(base), "decoded": True})


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgescale.devices.buildcheck",
                                 description="Load llama.cpp, report its kernels and decode a few tokens.")
    ap.add_argument("--model", default=None, help="catalog name or GGUF path to decode with")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON line")
    ap.add_argument("--no-cache", action="store_true", help="probe in this process, not from the cache")
    args = ap.parse_args(argv)
    from edgescale.errors import EdgescaleError
    from edgescale.models.catalog import resolve_model

    try:
        model = resolve_model(args.model) if args.model else None
        t0 = time.perf_counter()
        report = probe_in_process(model) if args.no_cache else probe(model)
    except EdgescaleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        decoded = f"decoded {CHECK_TOKENS} tokens; " if report.decoded else ""
        print(f"{decoded}{kernel_summary(report.system_info)} ({time.perf_counter() - t0:.1f} s)")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
