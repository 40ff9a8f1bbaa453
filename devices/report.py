"""Human-readable lines for ``edgescale devices`` (the JSON form is ``hardware.to_dict``)."""

from __future__ import annotations

from typing import Any, Mapping

from edgescale.devices.buildcheck import Assessment, BuildReport, kernel_summary
from edgescale.devices.facts import BackendInfo, CpuInfo, DeviceInfo, human_bytes
from edgescale.devices.placement import Placement
from edgescale.devices.profile import DeviceProfile

_LABEL = 10


def _line(label: str, text: str) -> str:
    return f"{label:<{_LABEL}}{text}"


def _cpu_lines(cpu: CpuInfo) -> list[str]:
    cores = f"{cpu.physical_cores} cores / {cpu.logical_cores} threads"
    if cpu.performance_cores:
        cores += f", {cpu.performance_cores} performance cores"
    lines = [_line("CPU", f"{cpu.model} ({cpu.arch}), {cores}")]
    lines.append(_line("features", " ".join(cpu.features) if cpu.features else "(none detected)"))
    if cpu.busy_percent:
        busy = "  ".join(f"cpu{i} {b:.0f}%" for i, b in enumerate(cpu.busy_percent))
        lines.append(_line("load", busy))
    limits = []
    if cpu.allowed:
        limits.append(f"affinity {','.join(str(i) for i in cpu.allowed)}")
    if cpu.quota_cores is not None:
        limits.append(f"cgroup quota {cpu.quota_cores:g} cores")
    if limits:
        lines.append(_line("limits", "; ".join(limits)))
    rule = "free cores now; EDGESCALE_THREADS overrides"
    lines.append(_line("threads", f"{cpu.threads_default} by default ({rule})"))
    return lines


def _backend_text(b: BackendInfo) -> str:
    if not b.installed:
        why = f": {b.note}" if b.note else ""
        broken = f" ({b.version} present but does not load{why})" if b.version else ""
        return f"{b.name}: not installed{broken}"
    what = ", ".join(b.providers) if b.providers else "-"
    gpu = "GPU offload" if b.gpu_offload else "CPU only"
    return f"{b.name} {b.version}: {gpu} [{what}]"


def render_text(
    info: DeviceInfo, placement: Placement | None = None, profile: DeviceProfile | None = None
) -> str:
    """The description, then the placement and the speed profile when given."""
    os_text = f"{info.os} {info.os_version}".strip()
    lines = [_line("OS", os_text), *_cpu_lines(info.cpu)]
    ram = f"{human_bytes(info.ram_total)} total, {human_bytes(info.ram_available)} available"
    lines.append(_line("RAM", ram))
    if info.gpus:
        for g in info.gpus:
            memory = f"{human_bytes(g.free_bytes)} free of {human_bytes(g.total_bytes)}"
            lines.append(_line("GPU", f"{g.name} ({g.backend}): {memory}"))
    else:
        lines.append(_line("GPU", "none"))
    for b in info.backends:
        lines.append(_line("backend", _backend_text(b)))
    if placement is not None:
        layers = "no GPU layers" if placement.offload == "none" else (
            f"{placement.n_gpu_layers} GPU layers ({placement.offload} offload)"
        )
        where = f"{placement.backend} on {placement.device}, {layers}"
        where += f", {placement.n_threads} threads"
        lines.append(_line("placement", where))
        lines.append(_line("", placement.reason))
        for tip in placement.advice:
            lines.append(_line("advice", tip))
    if profile is not None:
        lines.append(
            _line(
                "profile",
                f"{profile.backend} {profile.backend_version}, {profile.n_threads} threads, "
                f"{profile.n_gpu_layers} GPU layers, made {profile.created}",
            )
        )
        lines.append(_line("prefill", f"{profile.prefill_tok_s:.0f} tokens/s"))
        steps = "  ".join(
            f"k={k} {s * 1000:.1f} ms ({k / s:.0f} tok/s)" for k, s in profile.step_s.items()
        )
        lines.append(_line("step", steps))
        if profile.cell_s > 0:
            per_cell = f"+{profile.cell_s * 1e6:.2f} us per sequence per KV cell in a step"
            lines.append(_line("context", per_cell))
    return "\n".join(lines)


def build_lines(record: Mapping[str, Any] | None, report: BuildReport, assessment: Assessment | None) -> list[str]:
    """The llama.cpp build: how it was made, the kernels it uses, the devices it loaded,
    and whether it matches this CPU."""
    if record is not None:
        spec = record.get("spec", {})
        made = f"built {record.get('built', '?')[:10]} in {record.get('build_s', 0):.0f} s by scripts/install.sh"
        lines = [_line("build", f"llama.cpp {spec.get('version', '?')} {spec.get('target', '?')}: "
                                f"{record.get('description', '')}; {made}")]
        lines.append(_line("", f"CMAKE_ARGS={spec.get('cmake_args', '')!r} CFLAGS={spec.get('cflags', '')!r}"))
    else:
        lines = [_line("build", f"llama.cpp {report.version or '?'}: not built by scripts/install.sh "
                                "(flags unknown)")]
    if not report.ok:
        lines.append(_line("check", f"does not run here: {report.crash or report.error}"))
    if report.system_info:
        lines.append(_line("kernels", kernel_summary(report.system_info)))
    if report.devices:
        lines.append(_line("loaded", "; ".join(report.devices)))
    if assessment is not None:
        lines.append(_line("match", assessment.verdict))
    return lines
