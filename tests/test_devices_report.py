"""The human-readable device report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from edgescale.devices.facts import from_dict
from edgescale.devices.placement import place
from edgescale.devices.profile import DeviceProfile
from edgescale.devices.report import render_text
from edgescale.models.info import read_model_info

FIXTURES = Path(__file__).parent / "fixtures" / "devices"


def test_report_lists_hardware_placement_and_profile(model_path: Path) -> None:
    info = from_dict(json.loads((FIXTURES / "linux_rtx2060_cuda.json").read_text()))
    model = read_model_info(model_path)
    placement = place(info, model, kv_bytes=model.kv_bytes(1024))
    profile = DeviceProfile(
        model_key="k",
        backend="llama.cpp",
        backend_version="0.3.36",
        n_threads=8,
        prefill_tok_s=2500.0,
        step_s={1: 0.004, 8: 0.006},
        created="2025-01-01T00:00:00+00:00",
        n_gpu_layers=placement.n_gpu_layers,
        cell_s=1e-7,
    )
    text = render_text(info, placement, profile)
    lines = text.splitlines()
    assert lines[0].startswith("OS") and "Linux" in lines[0]
    assert any(ln.startswith("CPU") and "i7-9700" in ln and "8 cores" in ln for ln in lines)
    gpu = [ln for ln in lines if ln.startswith("GPU")]
    assert gpu and "RTX 2060" in gpu[0] and "5.5 GiB free of 6.0 GiB" in gpu[0]
    assert any("llama.cpp 0.3.36: GPU offload [CUDA, CPU]" in ln for ln in lines)
    assert any(ln.startswith("placement") and "cuda:0" in ln and "full offload" in ln for ln in lines)
    assert any("k=8 6.0 ms (1333 tok/s)" in ln for ln in lines)
    assert any(ln.startswith("context") for ln in lines)


def test_report_without_gpu_or_backend() -> None:
    info = from_dict(json.loads((FIXTURES / "rpi4_cortex_a72.json").read_text()))
    gone = tuple(replace(b, installed=False, version="") for b in info.backends)
    text = render_text(replace(info, backends=gone))
    assert "GPU       none" in text
    assert "llama.cpp: not installed" in text and "placement" not in text
    assert "threads   4 by default" in text
