"""The portable build: targets and flags, the wheel cache key, crash classification,
the build/CPU assessment, and the real subprocess check on the installed build."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgescale.devices import buildcheck, llama_build
from edgescale.devices.buildcheck import assess, compiled_features, kernel_summary
from edgescale.devices.llama_build import (
    build_env,
    fallback,
    make_spec,
    pinned_version,
    run_check,
    signal_name,
    target_for,
)

AMX_XEON_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | "
                 "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | "
                 "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")
XEON_FEATURES = ("avx", "avx2", "avx512_bf16", "avx512_vbmi", "avx512_vnni", "avx512bw", "avx512f", "avx512vl",
                 "avx_vnni", "amx_bf16", "amx_int8", "amx_tile", "bmi2", "f16c", "fma", "sse3", "ssse3")
EPYC_AVX2_FEATURES = ("avx", "avx2", "bmi2", "f16c", "fma", "sse3", "sse4_1", "sse4_2", "ssse3")


def test_native_target_turns_amx_code_off_on_x86_only() -> None:
    native = target_for("native", "x86_64")
    assert native.cmake_args == ()  # llama.cpp's own -march=native
    assert set(native.cflags) == {"-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"}
    assert target_for("native", "aarch64").cflags == ()
    assert target_for("native", "x86_64", no_amx_flags=False).cflags == ()


def test_portable_and_baseline_targets() -> None:
    portable = target_for("portable", "x86_64")
    assert "-DGGML_NATIVE=OFF" in portable.cmake_args
    assert {"-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON"} <= set(portable.cmake_args)
    assert {"-DGGML_AVX512=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AVX_VNNI=OFF"} <= set(portable.cmake_args)
    baseline = target_for("baseline", "x86_64")
    assert "-DGGML_AVX2=OFF" in baseline.cmake_args and "-DGGML_AVX=OFF" in baseline.cmake_args
    assert target_for("portable", "arm64").cmake_args == ("-DGGML_NATIVE=OFF", "-DGGML_CPU_ARM_ARCH=armv8-a")
    with pytest.raises(llama_build.BuildFailed):
        target_for("fastest", "x86_64")


def test_fallback_chain_follows_the_cpu() -> None:
    assert fallback("native", "x86_64", EPYC_AVX2_FEATURES) == "portable"
    assert fallback("native", "x86_64", ("sse3", "ssse3")) == "baseline"  # no AVX2: skip v3
    assert fallback("portable", "x86_64", EPYC_AVX2_FEATURES) == "baseline"
    assert fallback("baseline", "x86_64", EPYC_AVX2_FEATURES) is None
    assert fallback("native", "aarch64", ("neon",)) == "portable"
    assert fallback("portable", "aarch64", ("neon",)) is None


def test_user_flags_are_kept_and_gpu_args_come_last() -> None:
    env = {"CMAKE_ARGS": "-DGGML_CUDA=on", "CFLAGS": "-O2", "PATH": "/usr/bin"}
    out = build_env(target_for("native", "x86_64"), env)
    assert out["CMAKE_ARGS"] == "-DLLAVA_BUILD=OFF -DGGML_CUDA=on"
    assert out["CFLAGS"] == "-O2 -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    assert out["CXXFLAGS"] == "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    assert out["PATH"] == "/usr/bin"
    assert "CFLAGS" not in build_env(target_for("portable", "x86_64"), {})


def test_cache_key_changes_with_everything_that_changes_the_binary() -> None:
    native = target_for("native", "x86_64")
    base = make_spec("0.3.36", native, {}, cpu="flags: avx2", compiler="gcc 12")
    assert base.key() == make_spec("0.3.36", native, {}, cpu="flags: avx2", compiler="gcc 12").key()
    others = [
        make_spec("0.3.36", native, {"CMAKE_ARGS": "-DGGML_CUDA=on"}, cpu="flags: avx2", compiler="gcc 12"),
        make_spec("0.3.36", native, {}, cpu="flags: avx2 avx512f", compiler="gcc 12"),
        make_spec("0.3.36", native, {}, cpu="flags: avx2", compiler="gcc 13"),
        make_spec("0.3.37", native, {}, cpu="flags: avx2", compiler="gcc 12"),
        make_spec("0.3.36", native, {"CFLAGS": "-O1"}, cpu="flags: avx2", compiler="gcc 12"),
        make_spec("0.3.36", target_for("portable", "x86_64"), {}, cpu="flags: avx2", compiler="gcc 12"),
    ]
    assert len({base.key(), *(o.key() for o in others)}) == len(others) + 1
    # a portable wheel is not tied to the CPU it was built on
    p1 = make_spec("0.3.36", target_for("portable", "x86_64"), {}, cpu="one", compiler="gcc 12")
    p2 = make_spec("0.3.36", target_for("portable", "x86_64"), {}, cpu="another", compiler="gcc 12")
    assert p1.key() == p2.key()
    assert base.dirname().startswith("llama-cpp-python-0.3.36-native-")


def test_pinned_version_is_read_from_the_constraints(tmp_path: Path) -> None:
    assert pinned_version(Path(__file__).parents[1] / "constraints.txt") == "0.3.36"
    bad = tmp_path / "c.txt"
    bad.write_text("numpy==2.0\n")
    with pytest.raises(llama_build.BuildFailed):
        pinned_version(bad)


def test_a_process_killed_by_sigill_is_classified_as_a_crash() -> None:
    die = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
    out = run_check(die)
    assert not out.ok and out.crashed
    assert out.message == "llama.cpp died of SIGILL (illegal instruction) while decoding"
    failing = run_check([sys.executable, "-c", "import sys; print('error: no model', file=sys.stderr); sys.exit(3)"])
    assert not failing.ok and not failing.crashed and failing.message == "error: no model"
    assert run_check([sys.executable, "-c", "print('decoded 8 tokens')"]).ok
    assert signal_name(-signal.SIGSEGV).startswith("SIGSEGV")


def test_compiled_features_and_kernel_summary() -> None:
    assert compiled_features(AMX_XEON_INFO)[:3] == ("sse3", "ssse3", "avx")
    assert "amx_int8" in compiled_features(AMX_XEON_INFO)
    cuda = "CUDA : ARCHS = 900 | USE_GRAPHS = 1 | CPU : SSE3 = 1 | AVX2 = 1 | REPACK = 1 | "
    assert compiled_features(cuda) == ("sse3", "avx2")
    assert kernel_summary(cuda) == "CUDA: ARCHS=900 USE_GRAPHS; CPU: SSE3 AVX2 REPACK"


def test_assessment_names_what_a_build_does_wrong_on_a_cpu() -> None:
    amx = assess(AMX_XEON_INFO, XEON_FEATURES, "x86_64")
    assert amx.amx and not amx.missing and "AMX kernels compiled in" in amx.verdict
    # the same wheel copied to an AVX2-only EPYC: names the instructions that kill it
    copied = assess(AMX_XEON_INFO, EPYC_AVX2_FEATURES, "x86_64")
    assert set(copied.missing) == {"avx_vnni", "avx512f", "avx512_vbmi", "avx512_vnni", "avx512_bf16", "amx_int8"}
    assert copied.verdict.startswith("mismatch:")
    portable = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | REPACK = 1 | "
    slow = assess(portable, XEON_FEATURES, "x86_64")
    assert not slow.missing and set(slow.unused) == {"avx512f", "avx512_vnni", "avx_vnni"}
    assert "does not use" in slow.verdict
    assert assess(portable, EPYC_AVX2_FEATURES, "x86_64").verdict == "matches this CPU"
    assert assess(portable, (), "x86_64").missing == ()  # an unreadable CPU is not judged


def test_the_installed_build_runs_here_and_matches_this_cpu(model_path: Path) -> None:
    """The real check, in a subprocess, on the build the install script made for this machine."""
    from edgescale.devices.cpu_probe import read_cpu

    report = buildcheck.run_probe(model_path)
    assert report.ok and report.decoded and not report.crash
    assert report.devices and report.devices[-1].startswith("CPU")
    cpu = read_cpu()
    check = assess(report.system_info, cpu.features, cpu.arch)
    assert check.missing == () and not check.amx
    if "avx2" in cpu.features:  # the x86 fast path must survive the portable-build changes
        assert "avx2" in check.compiled


def test_buildcheck_cli_prints_one_json_line(model_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "edgescale.devices.buildcheck", "--model", str(model_path),
                          "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["ok"] and data["decoded"] and "CPU" in data["system_info"]


def test_a_crash_report_becomes_one_line_naming_the_rebuild() -> None:
    crashed = buildcheck.BuildReport(False, system_info=AMX_XEON_INFO, crash="SIGILL (illegal instruction)")
    msg = buildcheck.crash_message(crashed, EPYC_AVX2_FEATURES, "x86_64")
    assert msg.startswith("llama.cpp dies on this CPU with SIGILL (illegal instruction) (it uses avx_vnni, ")
    assert "bash scripts/install.sh --rebuild" in msg and "\n" not in msg
    bare = buildcheck.BuildReport(False, crash="SIGILL (illegal instruction)")
    assert buildcheck.crash_message(bare, EPYC_AVX2_FEATURES, "x86_64").startswith(
        "llama.cpp dies on this CPU with SIGILL (illegal instruction); rebuild")


def test_ensure_runs_passes_on_the_installed_build(model_path: Path) -> None:
    buildcheck.ensure_runs(model_path)  # raises BackendUnavailable on a build that dies here
    assert buildcheck.probe(model_path).decoded  # and the verdict is cached
