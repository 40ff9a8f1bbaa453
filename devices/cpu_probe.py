"""Read what the CPU is: model name, architecture, SIMD features, big/little cores.

Linux: ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features`` and ``CPU part``),
``/sys/devices/system/cpu/cpu*/cpu_capacity`` (big.LITTLE) and
``/sys/devices/cpu_core/cpus`` (Intel P-cores). macOS: ``sysctl``
(``machdep.cpu.brand_string``, ``hw.optional.*``, ``hw.perflevel0.*``).
The parsers are pure functions over text so recorded outputs test them.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

SYSCTL_TIMEOUT_S = 2.0

# /proc/cpuinfo x86 flag -> normalised feature name (only what matters for inference kernels).
_X86_FLAGS: dict[str, str] = {
    "pni": "sse3",
    "ssse3": "ssse3",
    "sse4_1": "sse4_1",
    "sse4_2": "sse4_2",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "bmi2": "bmi2",
    "avx_vnni": "avx_vnni",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512vbmi": "avx512_vbmi",
    "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_tile": "amx_tile",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
}

# /proc/cpuinfo ARM "Features" word -> normalised feature name.
_ARM_FEATURES: dict[str, str] = {
    "neon": "neon",  # 32-bit kernels
    "asimd": "neon",  # AArch64 Advanced SIMD is NEON
    "asimdhp": "fp16",
    "fphp": "fp16",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
    "sme": "sme",
}

# ARM Ltd (implementer 0x41) CPU part numbers.
_ARM_PARTS: dict[int, str] = {
    0xD01: "Cortex-A32",
    0xD03: "Cortex-A53",
    0xD04: "Cortex-A35",
    0xD05: "Cortex-A55",
    0xD07: "Cortex-A57",
    0xD08: "Cortex-A72",
    0xD09: "Cortex-A73",
    0xD0A: "Cortex-A75",
    0xD0B: "Cortex-A76",
    0xD0C: "Neoverse-N1",
    0xD0D: "Cortex-A77",
    0xD40: "Neoverse-V1",
    0xD41: "Cortex-A78",
    0xD44: "Cortex-X1",
    0xD46: "Cortex-A510",
    0xD47: "Cortex-A710",
    0xD48: "Cortex-X2",
    0xD49: "Neoverse-N2",
    0xD4D: "Cortex-A715",
    0xD4E: "Cortex-X3",
    0xD4F: "Neoverse-V2",
    0xD80: "Cortex-A520",
    0xD81: "Cortex-A720",
    0xD82: "Cortex-X4",
}
_LITTLE_PARTS = frozenset({0xD01, 0xD03, 0xD04, 0xD05, 0xD46, 0xD80})
BIG_CAPACITY_FRACTION = 0.7  # a core with >= 70% of the top cpu_capacity counts as big

SYSCTL_NAMES: tuple[str, ...] = (
    "machdep.cpu.brand_string",
    "hw.optional.arm64",
    "hw.nperflevels",
    "hw.perflevel0.physicalcpu",
    "hw.perflevel0.logicalcpu",
    "hw.optional.neon",
    "hw.optional.arm.FEAT_FP16",
    "hw.optional.arm.FEAT_DotProd",
    "hw.optional.arm.FEAT_I8MM",
    "hw.optional.arm.FEAT_BF16",
    "hw.optional.arm.FEAT_SME",
    "machdep.cpu.features",
    "machdep.cpu.leaf7_features",
)
_SYSCTL_ARM: dict[str, str] = {
    "hw.optional.neon": "neon",
    "hw.optional.arm.FEAT_FP16": "fp16",
    "hw.optional.arm.FEAT_DotProd": "dotprod",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_BF16": "bf16",
    "hw.optional.arm.FEAT_SME": "sme",
}
# machdep.cpu.features / leaf7_features words on Intel Macs.
_SYSCTL_X86: dict[str, str] = {
    "SSE3": "sse3",
    "SSSE3": "ssse3",
    "SSE4.1": "sse4_1",
    "SSE4.2": "sse4_2",
    "AVX1.0": "avx",
    "AVX2": "avx2",
    "FMA": "fma",
    "F16C": "f16c",
    "AVX512F": "avx512f",
    "AVX512BW": "avx512bw",
    "AVX512VL": "avx512vl",
    "AVX512VNNI": "avx512_vnni",
}

Runner = Callable[[Sequence[str]], str]


@dataclass(frozen=True)
class CpuFacts:
    model: str
    arch: str
    features: tuple[str, ...]
    performance_cpus: tuple[int, ...] = ()  # logical ids of big cores; () when all alike or unknown
    performance_cores: int = 0  # physical big cores; 0 when all alike


def _sorted_unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(names)))


# -- Linux -------------------------------------------------------------------------
def parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """``/proc/cpuinfo`` -> one dict per blank-line separated block (keys lower-cased)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip().lower()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def x86_features(flags: str) -> tuple[str, ...]:
    return _sorted_unique(_X86_FLAGS[f] for f in flags.split() if f in _X86_FLAGS)


def arm_features(words: str) -> tuple[str, ...]:
    return _sorted_unique(_ARM_FEATURES[w] for w in words.split() if w in _ARM_FEATURES)


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


def arm_part_name(implementer: int | None, part: int | None) -> str:
    if implementer == 0x41 and part in _ARM_PARTS:
        return _ARM_PARTS[part]
    if part is None:
        return "ARM"
    impl = f"0x{implementer:02x}" if implementer is not None else "?"
    return f"ARM (implementer {impl}, part 0x{part:03x})"


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """Kernel CPU list syntax ("0-3,8,10-11") -> ids."""
    out: list[int] = []
    for chunk in text.strip().split(","):
        chunk = chunk.strip()
        if not chunk:
            continue
        lo, sep, hi = chunk.partition("-")
        try:
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            return ()
    return tuple(sorted(set(out)))


def big_cpus_from_capacity(capacity: Mapping[int, int]) -> tuple[int, ...]:
    """Ids of the big cores when ``cpu_capacity`` differs between cores, else ()."""
    if len(set(capacity.values())) < 2:
        return ()
    top = max(capacity.values())
    return tuple(sorted(i for i, c in capacity.items() if c >= BIG_CAPACITY_FRACTION * top))


def big_cpus_from_parts(parts: Mapping[int, int]) -> tuple[int, ...]:
    """Ids of the cores that are not LITTLE designs when both kinds are present, else ()."""
    big = tuple(sorted(i for i, p in parts.items() if p not in _LITTLE_PARTS))
    return big if 0 < len(big) < len(parts) else ()


def linux_cpu_facts(
    cpuinfo: str,
    machine: str,
    *,
    capacity: Mapping[int, int] | None = None,
    intel_core_cpus: tuple[int, ...] = (),
    core_ids: Mapping[int, tuple[int, int]] | None = None,
    board: str = "",
) -> CpuFacts:
    """Facts from ``/proc/cpuinfo`` text plus optional sysfs readings.

    ``core_ids`` maps a logical id to its (package, core) pair, used to count the
    physical cores among the big ones (Intel P-cores run two threads each).
    """
    blocks = parse_cpuinfo(cpuinfo)
    procs = [b for b in blocks if "processor" in b and _int(b["processor"]) is not None]
    first = procs[0] if procs else (blocks[0] if blocks else {})
    merged: dict[str, str] = {}
    for b in blocks:
        for k, v in b.items():
            merged.setdefault(k, v)
    if "flags" in merged:
        features = x86_features(merged["flags"])
    else:
        features = arm_features(first.get("features", merged.get("features", "")))
    parts: dict[int, int] = {}
    for b in procs:
        pid, part = _int(b.get("processor")), _int(b.get("cpu part"))
        if pid is not None and part is not None:
            parts[pid] = part
    if parts:
        impl = _int(first.get("cpu implementer", merged.get("cpu implementer")))
        counts: dict[str, int] = {}
        for pid in sorted(parts, key=lambda i: (parts[i] in _LITTLE_PARTS, i)):
            name = arm_part_name(impl, parts[pid])
            counts[name] = counts.get(name, 0) + 1
        if len(counts) == 1:
            model = next(iter(counts))
        else:
            model = " + ".join(f"{n}x {name}" for name, n in counts.items())
    else:
        names = [merged.get("model name"), merged.get("hardware"), merged.get("processor")]
        model = next((n for n in names if n and _int(n) is None), machine)
    model = " ".join(str(model).split())
    if not board:  # Pi OS names the board in cpuinfo ("Model : ..."); x86 puts a number there
        named = merged.get("model", "")
        board = named if named and _int(named) is None else ""
    if board:
        model = f"{model} ({board})"
    if intel_core_cpus:
        big = intel_core_cpus
    else:
        big = big_cpus_from_capacity(capacity or {}) or big_cpus_from_parts(parts)
    n_big = 0
    if big:
        n_big = len({core_ids[i] for i in big if i in core_ids}) if core_ids else len(big)
        n_big = n_big or len(big)
    return CpuFacts(
        model=model, arch=machine, features=features, performance_cpus=big, performance_cores=n_big
    )


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def read_linux_cpu(
    machine: str, *, proc: Path = Path("/proc"), sysfs: Path = Path("/sys")
) -> CpuFacts:
    cpu_dir = sysfs / "devices" / "system" / "cpu"
    capacity: dict[int, int] = {}
    core_ids: dict[int, tuple[int, int]] = {}
    for d in sorted(cpu_dir.glob("cpu[0-9]*")):
        idx = _int(d.name[3:])
        if idx is None:
            continue
        cap = _int((_read(d / "cpu_capacity") or "").strip() or None)
        if cap is not None:
            capacity[idx] = cap
        core = _int((_read(d / "topology" / "core_id") or "").strip() or None)
        pkg = _int((_read(d / "topology" / "physical_package_id") or "").strip() or None)
        if core is not None:
            core_ids[idx] = (pkg or 0, core)
    intel: tuple[int, ...] = ()
    if (sysfs / "devices" / "cpu_atom").is_dir():
        intel = parse_cpu_list(_read(sysfs / "devices" / "cpu_core" / "cpus") or "")
    board = (_read(proc / "device-tree" / "model") or "").replace("\x00", "").strip()
    return linux_cpu_facts(
        _read(proc / "cpuinfo") or "",
        machine,
        capacity=capacity,
        intel_core_cpus=intel,
        core_ids=core_ids,
        board=board,
    )


# -- macOS -------------------------------------------------------------------------
def parse_sysctl(text: str) -> dict[str, str]:
    """``sysctl a b c`` output ("name: value" lines) -> dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def mac_cpu_facts(values: Mapping[str, str], machine: str) -> CpuFacts:
    """Facts from sysctl values. Under Rosetta ``platform.machine()`` says x86_64 but
    ``hw.optional.arm64`` is 1: the arch reported is then arm64 (the real CPU)."""
    arm = values.get("hw.optional.arm64") == "1" or machine in ("arm64", "aarch64")
    if arm:
        features = _sorted_unique(n for key, n in _SYSCTL_ARM.items() if values.get(key) == "1")
        if "neon" not in features:  # every Apple silicon core has it; old macOS lacks the key
            features = _sorted_unique((*features, "neon"))
    else:
        words = " ".join(
            values.get(key, "") for key in ("machdep.cpu.features", "machdep.cpu.leaf7_features")
        )
        features = _sorted_unique(_SYSCTL_X86[w] for w in words.upper().split() if w in _SYSCTL_X86)
    n_big = 0
    if (_int(values.get("hw.nperflevels")) or 1) > 1:
        n_big = _int(values.get("hw.perflevel0.physicalcpu")) or 0
    model = values.get("machdep.cpu.brand_string") or ("Apple silicon" if arm else machine)
    return CpuFacts(
        model=" ".join(model.split()),
        arch="arm64" if arm else machine,
        features=features,
        performance_cores=n_big,
    )


def run_sysctl(names: Sequence[str]) -> str:
    """stdout of ``sysctl names...``; sysctl skips unknown names and prints the rest."""
    try:
        done = subprocess.run(
            ["sysctl", *names],
            capture_output=True,
            text=True,
            timeout=SYSCTL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout


def read_cpu(
    system: str | None = None, machine: str | None = None, *, sysctl: Runner = run_sysctl
) -> CpuFacts:
    """The facts for this machine (Linux, macOS; elsewhere only the name and arch)."""
    system = system or platform.system()
    machine = machine or platform.machine()
    if system == "Linux":
        return read_linux_cpu(machine)
    if system == "Darwin":
        return mac_cpu_facts(parse_sysctl(sysctl(SYSCTL_NAMES)), machine)
    return CpuFacts(model=platform.processor() or machine, arch=machine, features=())
