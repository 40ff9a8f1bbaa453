"""Device description: parsers over recorded outputs, the live describe(), JSON round trip."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from edgescale.devices import cpu_probe, gpu_probe
from edgescale.devices.backend_probe import parse_system_info_backends
from edgescale.devices.facts import CpuInfo, DeviceInfo, from_dict, human_bytes, to_dict
from edgescale.devices.hardware import cgroup_memory, describe
from edgescale.devices.threads import choose_threads
from edgescale.errors import UsageError

FIXTURES = Path(__file__).parent / "fixtures" / "devices"
GiB = 1 << 30
MiB = 1 << 20

X86_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model\t\t: 158
model name\t: Intel(R) Core(TM) i7-9700 CPU @ 3.00GHz
flags\t\t: fpu vme de pse tsc msr pae mce sse sse2 pni ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2

processor\t: 1
vendor_id\t: GenuineIntel
model\t\t: 158
model name\t: Intel(R) Core(TM) i7-9700 CPU @ 3.00GHz
flags\t\t: fpu vme de pse tsc msr pae mce sse sse2 pni ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2
"""

AVX512_FLAGS = "fpu sse sse2 pni ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512bw avx512vl avx512_vnni amx_int8"


def _arm_block(i: int, part: str, features: str) -> str:
    return (
        f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 3\n\n"
    )


PI4_CPUINFO = "".join(_arm_block(i, "0xd08", "fp asimd evtstrm crc32 cpuid") for i in range(4)) + (
    "Revision\t: c03114\nSerial\t\t: 100000001234abcd\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
)
RK3588_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
RK3588_CPUINFO = "".join(
    _arm_block(i, "0xd05" if i < 4 else "0xd0b", RK3588_FEATURES) for i in range(8)
)
M2_SYSCTL = """\
machdep.cpu.brand_string: Apple M2
hw.optional.arm64: 1
hw.nperflevels: 2
hw.perflevel0.physicalcpu: 4
hw.perflevel0.logicalcpu: 4
hw.optional.neon: 1
hw.optional.arm.FEAT_FP16: 1
hw.optional.arm.FEAT_DotProd: 1
hw.optional.arm.FEAT_I8MM: 1
hw.optional.arm.FEAT_BF16: 1
hw.optional.arm.FEAT_SME: 0
"""
INTEL_MAC_SYSCTL = """\
machdep.cpu.brand_string: Intel(R) Core(TM) i9-9880H CPU @ 2.30GHz
hw.optional.arm64: 0
machdep.cpu.features: FPU VME DE PSE TSC MSR SSE SSE2 SSE3 PCLMULQDQ SSSE3 FMA CX16 SSE4.1 SSE4.2 AVX1.0 RDRAND F16C
machdep.cpu.leaf7_features: RDWRFSGS TSC_THREAD_OFFSET SGX BMI1 AVX2 SMEP BMI2 ERMS INVPCID
"""


def _load(name: str) -> DeviceInfo:
    return from_dict(json.loads((FIXTURES / name).read_text()))


# -- CPU parsers ----------------------------------------------------------------------
def test_x86_cpuinfo_gives_model_and_normalised_features() -> None:
    facts = cpu_probe.linux_cpu_facts(X86_CPUINFO, "x86_64")
    assert facts.model == "Intel(R) Core(TM) i7-9700 CPU @ 3.00GHz"  # not the numeric "model" line
    assert facts.features == ("avx", "avx2", "bmi2", "f16c", "fma", "sse3", "sse4_1", "sse4_2", "ssse3")
    assert facts.performance_cpus == () and facts.performance_cores == 0


def test_x86_avx512_and_amx_flags_are_kept() -> None:
    feats = cpu_probe.x86_features(AVX512_FLAGS)
    assert {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "amx_int8"} <= set(feats)
    assert "sse" not in feats  # only what inference kernels care about


def test_raspberry_pi_cpuinfo_names_core_and_board() -> None:
    facts = cpu_probe.linux_cpu_facts(PI4_CPUINFO, "aarch64")
    assert facts.model == "Cortex-A72 (Raspberry Pi 4 Model B Rev 1.4)"
    assert facts.features == ("neon",)  # asimd is NEON; the A72 has no dot-product
    assert facts.performance_cpus == ()


def test_big_little_board_found_by_cpu_capacity() -> None:
    capacity = {i: 414 if i < 4 else 1024 for i in range(8)}
    facts = cpu_probe.linux_cpu_facts(RK3588_CPUINFO, "aarch64", capacity=capacity)
    assert facts.model == "4x Cortex-A76 + 4x Cortex-A55"
    assert facts.performance_cpus == (4, 5, 6, 7) and facts.performance_cores == 4
    assert {"neon", "dotprod", "fp16"} <= set(facts.features)


def test_big_little_found_by_part_numbers_without_capacity() -> None:
    facts = cpu_probe.linux_cpu_facts(RK3588_CPUINFO, "aarch64")
    assert facts.performance_cpus == (4, 5, 6, 7)


def test_intel_hybrid_counts_physical_p_cores() -> None:
    # 8 P-cores with two threads each (ids 0-15) and 8 E-cores (16-23).
    core_ids = {i: (0, i // 2) for i in range(16)} | {i: (0, 100 + i) for i in range(16, 24)}
    facts = cpu_probe.linux_cpu_facts(
        X86_CPUINFO, "x86_64", intel_core_cpus=tuple(range(16)), core_ids=core_ids
    )
    assert facts.performance_cpus == tuple(range(16)) and facts.performance_cores == 8


def test_cpu_list_syntax() -> None:
    assert cpu_probe.parse_cpu_list("0-3,8,10-11\n") == (0, 1, 2, 3, 8, 10, 11)
    assert cpu_probe.parse_cpu_list("garbage") == ()


def test_apple_m2_sysctl() -> None:
    facts = cpu_probe.read_cpu("Darwin", "arm64", sysctl=lambda names: M2_SYSCTL)
    assert facts.model == "Apple M2" and facts.arch == "arm64"
    assert facts.features == ("bf16", "dotprod", "fp16", "i8mm", "neon")
    assert facts.performance_cores == 4


def test_rosetta_reports_the_real_arm_cpu() -> None:
    facts = cpu_probe.mac_cpu_facts(cpu_probe.parse_sysctl(M2_SYSCTL), "x86_64")
    assert facts.arch == "arm64"


def test_intel_mac_sysctl() -> None:
    facts = cpu_probe.read_cpu("Darwin", "x86_64", sysctl=lambda names: INTEL_MAC_SYSCTL)
    assert facts.arch == "x86_64"
    assert {"avx", "avx2", "fma", "f16c", "sse4_2"} <= set(facts.features)
    assert "avx512f" not in facts.features and facts.performance_cores == 0


def test_sysctl_failure_still_describes_apple_silicon() -> None:
    facts = cpu_probe.read_cpu("Darwin", "arm64", sysctl=lambda names: "")
    assert facts.arch == "arm64" and facts.features == ("neon",) and facts.model == "Apple silicon"


# -- GPUs and backends ------------------------------------------------------------------
def test_nvidia_smi_csv() -> None:
    text = (
        "NVIDIA GeForce RTX 2060, 6144, 5632\n"
        "NVIDIA A100-SXM4-80GB, 81920, [N/A]\n"
        "Tesla T4, 15360, 15000\n"
    )
    gpus = gpu_probe.parse_nvidia_smi(text)
    assert [g.name for g in gpus] == ["NVIDIA GeForce RTX 2060", "Tesla T4"]
    assert gpus[0].total_bytes == 6144 * MiB and gpus[0].free_bytes == 5632 * MiB
    assert [g.index for g in gpus] == [0, 1] and {g.backend for g in gpus} == {"cuda"}


def test_nvidia_failure_means_no_gpus() -> None:
    assert gpu_probe.nvidia_gpus(run=lambda args: None) == ()
    assert gpu_probe.nvidia_gpus(run=lambda args: "NVIDIA-SMI has failed\n") == ()


def _fake_exe(folder: Path, name: str, body: str) -> None:
    exe = folder / name
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_nvidia_smi_subprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_exe(tmp_path, "nvidia-smi", 'echo "NVIDIA GeForce RTX 4090, 24564, 23000"')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    gpus = gpu_probe.nvidia_gpus()
    assert len(gpus) == 1 and gpus[0].free_bytes == 23000 * MiB


def test_nvidia_smi_error_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_exe(tmp_path, "nvidia-smi", 'echo "Failed to initialize NVML: Driver mismatch"; exit 9')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    assert gpu_probe.nvidia_gpus() == ()


def test_metal_working_set_rule() -> None:
    assert gpu_probe.metal_working_set(16 * GiB) == int(16 * GiB * 2 / 3)
    assert gpu_probe.metal_working_set(64 * GiB) == int(64 * GiB * 3 / 4)
    gpu = gpu_probe.apple_gpu("Apple M2 GPU", 16 * GiB, 14 * GiB)
    assert gpu.free_bytes == gpu.total_bytes  # available RAM above the working set is capped
    assert gpu_probe.apple_gpu("Apple M2 GPU", 16 * GiB, 6 * GiB).free_bytes == 6 * GiB


def test_llama_system_info_names_backends() -> None:
    assert parse_system_info_backends("CPU : SSE3 = 1 | AVX2 = 1 | REPACK = 1 | ") == ("CPU",)
    cuda = "CUDA : ARCHS = 750,860 | USE_GRAPHS = 1 | CPU : SSE3 = 1 | AVX2 = 1 | "
    assert parse_system_info_backends(cuda) == ("CUDA", "CPU")
    metal = "Metal : EMBED_LIBRARY = 1 | CPU : NEON = 1 | "
    assert parse_system_info_backends(metal) == ("Metal", "CPU")


def test_cgroup_memory_limit(tmp_path: Path) -> None:
    assert cgroup_memory(tmp_path) is None
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("1000\n")
    assert cgroup_memory(tmp_path) is None
    (tmp_path / "memory.max").write_text(f"{2 * GiB}\n")
    assert cgroup_memory(tmp_path) == (2 * GiB, 1000)


# -- threads rule ---------------------------------------------------------------------
def _cpu(**kw: object) -> CpuInfo:
    base = CpuInfo("x", "aarch64", 4, 4, (0.0, 0.0, 0.0, 0.0), ("neon",), 4)
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "threads"),
    [
        ({}, 4),
        ({"busy_percent": (100.0, 90.0, 5.0, 0.0)}, 2),
        ({"busy_percent": (100.0, 100.0, 100.0, 100.0)}, 1),
        ({"busy_percent": ()}, 4),  # not measured: every core counts as free
        ({"allowed": (0, 1)}, 2),
        ({"quota_cores": 1.5}, 1),
        ({"physical_cores": 2, "logical_cores": 4}, 2),  # hyperthreads do not count
    ],
)
def test_free_core_rule(kw: dict[str, object], threads: int) -> None:
    assert choose_threads(_cpu(**kw)) == threads


def test_big_little_uses_only_free_big_cores() -> None:
    cpu = CpuInfo(
        "4x Cortex-A76 + 4x Cortex-A55", "aarch64", 8, 8, (0.0,) * 8, ("neon",), 4,
        performance_cpus=(4, 5, 6, 7), performance_cores=4,
    )
    assert choose_threads(cpu) == 4
    assert choose_threads(replace(cpu, busy_percent=(100.0, 100.0, 0, 0, 0, 95.0, 0, 0))) == 3


def test_apple_caps_at_performance_cores() -> None:
    m2 = _load("mac_m2_metal.json").cpu
    assert choose_threads(m2) == 4 == m2.threads_default


# -- describe() and JSON ---------------------------------------------------------------
def test_describe_this_machine() -> None:
    info = describe(measure_load=True)
    cpu = info.cpu
    assert cpu.logical_cores >= cpu.physical_cores >= 1
    assert len(cpu.busy_percent) == cpu.logical_cores
    assert all(0.0 <= b <= 100.0 for b in cpu.busy_percent)
    assert 1 <= cpu.threads_default <= cpu.physical_cores
    assert cpu.threads_default == choose_threads(cpu)
    assert info.ram_total >= info.ram_available > 0
    names = {b.name: b for b in info.backends}
    import llama_cpp

    assert names["llama.cpp"].installed and names["llama.cpp"].version == llama_cpp.__version__
    assert "CPU" in names["llama.cpp"].providers
    ort = names["onnxruntime"]
    assert ort.installed and "CPUExecutionProvider" in ort.providers
    if cpu.arch == "x86_64" and os.path.exists("/proc/cpuinfo"):
        assert "sse3" in cpu.features
    assert from_dict(json.loads(json.dumps(to_dict(info)))) == info


def test_describe_without_load_counts_every_core_free() -> None:
    cpu = describe(measure_load=False).cpu
    assert cpu.busy_percent == ()
    assert cpu.threads_default == choose_threads(cpu) >= 1


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_fixtures_round_trip(name: str) -> None:
    info = _load(name)
    assert from_dict(json.loads(json.dumps(to_dict(info)))) == info
    assert info.cpu.threads_default == choose_threads(info.cpu)  # recorded with the same rule


def test_from_dict_rejects_bad_input_and_ignores_unknown_keys() -> None:
    good = json.loads((FIXTURES / "rpi4_cortex_a72.json").read_text())
    assert from_dict({**good, "added_later": 1}) == from_dict(good)
    with pytest.raises(UsageError):
        from_dict({**good, "cpu": [1, 2]})
    with pytest.raises(UsageError):
        from_dict({**good, "schema": 99})
    broken = json.loads(json.dumps(good))
    del broken["cpu"]["physical_cores"]
    with pytest.raises(UsageError):
        from_dict(broken)


def test_human_bytes() -> None:
    sizes = (512, 1536, 98 * MiB, 5.5 * GiB)
    assert [human_bytes(n) for n in sizes] == ["512 B", "1.5 KiB", "98.0 MiB", "5.5 GiB"]
