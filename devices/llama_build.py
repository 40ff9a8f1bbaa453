"""Build llama-cpp-python for this machine, cache the wheel by its flags, install it, and check it runs.

``scripts/install.sh`` drives this module (``python -m edgescale.devices.llama_build``):

* **Targets.** ``native`` (default) compiles for this CPU (``-march=native``) with
  AMX code generation switched off on x86-64: llama.cpp's AMX kernels die with
  SIGILL on Xeons that have AMX (upstream asks for the AMX tile permission on the
  main thread only, and worker threads run the tile instructions). ``portable``
  compiles for x86-64-v3 (AVX2, FMA, F16C, BMI2: Intel Haswell and AMD Zen on)
  or generic ARMv8-A, so one wheel runs on every such machine of a fleet.
  ``baseline`` is plain x86-64 (SSE2), the last resort.
* **Cache.** pip's wheel cache is keyed by the source package only, so a rebuild
  with other ``CMAKE_ARGS`` (a CUDA or Metal build after a CPU one) silently got the
  old wheel back. Wheels are kept here under a key of everything that changes the
  binary: version, target, ``CMAKE_ARGS``/``CFLAGS``/``CXXFLAGS``, compiler and, for
  ``native``, the CPU's flags; pip's cache is bypassed (``--no-cache-dir``).
* **Check.** After installing, a subprocess decodes a few tokens
  (``edgescale.devices.buildcheck``). If it dies of a signal, the next safer target
  is built and checked; if that dies too, one line says what happened.

This module imports only the standard library and edgescale modules that do
too, so it runs before edgescale's dependencies are installed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from edgescale.models.catalog import cache_dir

PACKAGE = "llama-cpp-python"
TARGETS = ("native", "portable", "baseline")
ALWAYS_CMAKE = ("-DLLAVA_BUILD=OFF",)  # the multimodal library is not used: halves the build time
NO_AMX = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")
_X86_V3 = ("SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2")
_X86_OFF = ("AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AVX_VNNI", "AMX_TILE", "AMX_INT8",
            "AMX_BF16")
RECORD = Path("share") / "edgescale" / "llama-build.json"  # under the environment's prefix
CHECK_TIMEOUT_S = 300.0


class BuildFailed(Exception):
    """A build, install or check step failed; the message is one line for the user."""


@dataclass(frozen=True)
class BuildTarget:
    name: str
    cmake_args: tuple[str, ...]
    cflags: tuple[str, ...]
    description: str


def is_x86(machine: str) -> bool:
    return machine.lower() in ("x86_64", "amd64", "x64", "i686", "i386")


def target_for(name: str, machine: str, *, no_amx_flags: bool = True) -> BuildTarget:
    """The flags of a target on this architecture. ``no_amx_flags``: the compiler accepts
    ``-mno-amx-*`` (GCC and Clang 11 and later; an older compiler emits no AMX anyway)."""
    x86 = is_x86(machine)
    if name == "native":
        flags = NO_AMX if x86 and no_amx_flags else ()
        what = "tuned for this CPU (-march=native)" + (", AMX code off" if flags else "")
        return BuildTarget(name, (), flags, what)
    if name == "portable":
        if x86:
            on = tuple(f"-DGGML_{f}=ON" for f in _X86_V3)
            off = tuple(f"-DGGML_{f}=OFF" for f in _X86_OFF)
            return BuildTarget(name, ("-DGGML_NATIVE=OFF", *on, *off), (),
                               "x86-64-v3: AVX2, FMA, F16C, BMI2 (Intel Haswell / AMD Zen and newer)")
        return BuildTarget(name, ("-DGGML_NATIVE=OFF", "-DGGML_CPU_ARM_ARCH=armv8-a"), (), "generic ARMv8-A")
    if name == "baseline":
        if x86:
            off = tuple(f"-DGGML_{f}=OFF" for f in (*_X86_V3, *_X86_OFF))
            return BuildTarget(name, ("-DGGML_NATIVE=OFF", *off), (), "plain x86-64 (SSE2): slow, runs anywhere")
        return target_for("portable", machine)
    raise BuildFailed(f"unknown build target {name!r}; choose one of: {', '.join(TARGETS)}")


def fallback(name: str, machine: str, cpu_features: Sequence[str]) -> str | None:
    """The next, safer target after ``name`` crashed on this CPU (None: nothing safer)."""
    if name == "native":
        v3 = not is_x86(machine) or {"avx2", "fma", "f16c"} <= set(cpu_features)
        return "portable" if v3 else "baseline"
    if name == "portable" and is_x86(machine):
        return "baseline"
    return None


def split_flags(text: str | None) -> tuple[str, ...]:
    return tuple((text or "").split())


def build_env(target: BuildTarget, env: Mapping[str, str]) -> dict[str, str]:
    """The environment pip builds with: the user's CMAKE_ARGS / CFLAGS / CXXFLAGS kept,
    the target's added (user flags last for CMake, so ``-DGGML_CUDA=on`` etc. apply)."""
    out = dict(env)
    cmake = [*ALWAYS_CMAKE, *target.cmake_args, *split_flags(env.get("CMAKE_ARGS"))]
    out["CMAKE_ARGS"] = " ".join(dict.fromkeys(cmake))
    for var in ("CFLAGS", "CXXFLAGS"):
        flags = [*split_flags(env.get(var)), *target.cflags]
        if flags:
            out[var] = " ".join(dict.fromkeys(flags))
    return out


def cpu_signature() -> str:
    """What ``-march=native`` sees: the CPU model and every feature flag."""
    system = platform.system()
    if system == "Linux":
        try:
            text = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            text = ""
        keep = ("model name", "flags", "features", "cpu implementer", "cpu part", "cpu architecture")
        lines = []
        for line in text.splitlines():
            key = line.partition(":")[0].strip().lower()
            if key in keep and line not in lines:
                lines.append(line.strip())
        if lines:
            return "\n".join(lines)
    if system == "Darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def compiler_id() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang") or "cc"
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return cc
    return out.splitlines()[0].strip() if out else cc


def compiler_accepts(flags: Sequence[str]) -> bool:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "t.c"
        src.write_text("int main(void) { return 0; }\n")
        try:
            rc = subprocess.run([cc, *flags, "-c", str(src), "-o", str(Path(tmp) / "t.o")],
                                capture_output=True, timeout=60).returncode
        except (OSError, subprocess.SubprocessError):
            return False
    return rc == 0


@dataclass(frozen=True)
class BuildSpec:
    version: str
    target: str
    machine: str
    system: str
    cmake_args: str
    cflags: str
    cxxflags: str
    compiler: str
    cpu: str  # only for native builds: the wheel is tied to this CPU

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def dirname(self) -> str:
        return f"{PACKAGE}-{self.version}-{self.target}-{self.key()}"


def make_spec(version: str, target: BuildTarget, env: Mapping[str, str], *, cpu: str, compiler: str) -> BuildSpec:
    machine, system = platform.machine(), platform.system()
    benv = build_env(target, env)
    return BuildSpec(
        version=version, target=target.name, machine=machine, system=system,
        cmake_args=benv.get("CMAKE_ARGS", ""), cflags=benv.get("CFLAGS", ""), cxxflags=benv.get("CXXFLAGS", ""),
        compiler=compiler, cpu=cpu if target.name == "native" else "",
    )


def cache_root(env: Mapping[str, str]) -> Path:
    """Where built wheels are kept: $EDGESCALE_WHEEL_CACHE, else edgescale's cache folder."""
    if env.get("EDGESCALE_WHEEL_CACHE"):
        return Path(env["EDGESCALE_WHEEL_CACHE"])
    return cache_dir() / "wheels"


def llama_lib_dir() -> Path | None:
    """llama-cpp-python's folder of shared libraries, found without importing it
    (importing loads the libraries, which is what may crash)."""
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return lib if lib.is_dir() else None


def lib_fingerprint(lib: Path | None) -> dict[str, list[int]]:
    """File name -> [size, mtime in ns] of the installed shared libraries: changes with every
    (re)install, so a cached check or an install record never outlives the files it was made for."""
    if lib is None:
        return {}
    out = {}
    for f in sorted(lib.iterdir()):
        if f.is_file():
            st = f.stat()
            out[f.name] = [st.st_size, st.st_mtime_ns]
    return out


def cached_wheel(folder: Path) -> Path | None:
    wheels = sorted(folder.glob("*.whl"))
    return wheels[0] if wheels and (folder / "build.json").exists() else None


def say(message: str) -> None:
    print(f"edgescale: {message}", file=sys.stderr, flush=True)


def build_wheel(spec: BuildSpec, target: BuildTarget, root: Path, env: Mapping[str, str]) -> Path:
    """Build the wheel into ``root/<spec dir>`` (log beside it) and return its path."""
    folder = root / spec.dirname()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "build.log"
    benv = build_env(target, env)
    say(f"building {PACKAGE} {spec.version} ({target.name}: {target.description}); "
        f"CMAKE_ARGS={benv['CMAKE_ARGS']!r}; takes 5 to 15 minutes; log: {log}")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=folder) as tmp, log.open("w") as out:
        cmd = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-cache-dir",
               "--no-binary", PACKAGE, f"{PACKAGE}=={spec.version}", "-w", tmp]
        out.write(f"# {' '.join(cmd)}\n# CMAKE_ARGS={benv['CMAKE_ARGS']}\n"
                  f"# CFLAGS={benv.get('CFLAGS', '')}\n# CXXFLAGS={benv.get('CXXFLAGS', '')}\n")
        out.flush()
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=benv).returncode
        built = sorted(Path(tmp).glob("*.whl"))
        if rc != 0 or not built:
            raise BuildFailed(f"building {PACKAGE} failed (pip exit {rc}); see {log}")
        wheel = folder / built[0].name
        shutil.move(str(built[0]), wheel)
    meta = {"spec": asdict(spec), "description": target.description, "wheel": wheel.name,
            "build_s": round(time.monotonic() - t0, 1), "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (folder / "build.json").write_text(json.dumps(meta, indent=2) + "\n")
    say(f"built in {meta['build_s']:.0f} s: {wheel}")
    return wheel


def install_wheel(wheel: Path, prefix: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel)]
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise BuildFailed(f"installing {wheel.name} failed (pip exit {rc})")
    meta = json.loads((wheel.parent / "build.json").read_text())
    meta["wheel_sha256"] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    meta["libs"] = lib_fingerprint(llama_lib_dir())
    record = prefix / RECORD
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(meta, indent=2) + "\n")


def ensure_installed(version: str, target_name: str, *, rebuild: bool, env: Mapping[str, str]) -> BuildSpec:
    """Build (or reuse) the wheel of ``target_name`` and install it into this environment."""
    machine = platform.machine()
    no_amx = is_x86(machine) and target_name == "native" and compiler_accepts(NO_AMX)
    target = target_for(target_name, machine, no_amx_flags=no_amx)
    spec = make_spec(version, target, env, cpu=cpu_signature(), compiler=compiler_id())
    root = cache_root(env)
    folder = root / spec.dirname()
    wheel = None if rebuild else cached_wheel(folder)
    if wheel is None:
        if folder.exists():
            shutil.rmtree(folder)
        wheel = build_wheel(spec, target, root, env)
    else:
        say(f"reusing the {target.name} build of {PACKAGE} {version} made for these flags: {wheel}")
    install_wheel(wheel, Path(sys.prefix))
    return spec


def signal_name(returncode: int) -> str:
    """-4 -> 'SIGILL (illegal instruction)'."""
    try:
        sig = signal.Signals(-returncode)
    except ValueError:
        return f"signal {-returncode}"
    what = signal.strsignal(sig) or ""
    return f"{sig.name} ({what.lower()})" if what else sig.name


@dataclass(frozen=True)
class CheckOutcome:
    ok: bool
    crashed: bool  # died of a signal: the build does not run on this CPU
    message: str


def run_check(cmd: Sequence[str], *, timeout_s: float = CHECK_TIMEOUT_S,
              runner: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> CheckOutcome:
    """Run the decode check command; classify how it ended."""
    try:
        proc = runner(list(cmd), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return CheckOutcome(False, False, f"the llama.cpp check did not finish in {timeout_s:.0f} s")
    if proc.returncode < 0:
        return CheckOutcome(False, True, f"llama.cpp died of {signal_name(proc.returncode)} while decoding")
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout or "").strip().splitlines() if ln.strip()]
        return CheckOutcome(False, False, lines[-1] if lines else f"the llama.cpp check exited {proc.returncode}")
    return CheckOutcome(True, False, (proc.stdout or "").strip().splitlines()[-1] if proc.stdout else "ok")


def check_command(model: str) -> list[str]:
    return [sys.executable, "-m", "edgescale.devices.buildcheck", "--model", model, "--no-cache"]


def check_and_fall_back(version: str, target_name: str, *, model: str, env: Mapping[str, str]) -> str:
    """Decode a few tokens in a subprocess; on a crash rebuild with the next safer target.
    Returns the target that runs; raises BuildFailed when none does."""
    from edgescale.devices.cpu_probe import read_cpu

    features = read_cpu(platform.system()).features
    name: str | None = target_name
    tried: list[str] = []
    while name is not None:
        outcome = run_check(check_command(model))
        if outcome.ok:
            say(f"llama.cpp ({name} build) runs on this CPU: {outcome.message}")
            return name
        tried.append(f"{name}: {outcome.message}")
        if not outcome.crashed:
            raise BuildFailed(f"the llama.cpp check failed: {outcome.message}")
        nxt = fallback(name, platform.machine(), features)
        if nxt is None:
            break
        say(f"{outcome.message} with the {name} build; rebuilding with the {nxt} flags")
        ensure_installed(version, nxt, rebuild=False, env=env)
        name = nxt
    raise BuildFailed(
        "llama.cpp does not run on this CPU with any build tried (" + "; ".join(tried) + "); "
        "report the CPU (`grep -m1 flags /proc/cpuinfo`) and the build logs under " + str(cache_root(env))
    )


def pinned_version(constraints: Path) -> str:
    for line in constraints.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep and name.strip().lower().replace("_", "-") == PACKAGE:
            return version.strip()
    raise BuildFailed(f"{constraints} pins no {PACKAGE} version")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgescale.devices.llama_build", description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("install", "check"))
    ap.add_argument("--constraints", type=Path, default=Path("constraints.txt"))
    ap.add_argument("--target", choices=TARGETS, default=os.environ.get("EDGESCALE_BUILD_TARGET", "native"))
    ap.add_argument("--rebuild", action="store_true", help="build again even when a wheel for these flags exists")
    ap.add_argument("--model", default="smollm2-135m", help="model the check decodes with")
    args = ap.parse_args(argv)
    try:
        version = pinned_version(args.constraints)
        if args.action == "install":
            ensure_installed(version, args.target, rebuild=args.rebuild, env=os.environ)
        else:
            check_and_fall_back(version, args.target, model=args.model, env=os.environ)
    except (BuildFailed, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
