"""Placement decisions over recorded device descriptions (tests/fixtures/devices/*.json)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edgescale.devices.facts import DeviceInfo, from_dict
from edgescale.devices.hardware import describe
from edgescale.devices.placement import (
    Placement,
    estimate_compute_bytes,
    layer_bytes,
    place,
    vram_margin,
)
from edgescale.devices.threads import choose_threads
from edgescale.errors import BackendUnavailable, UsageError
from edgescale.models.info import ModelInfo, read_model_info

FIXTURES = Path(__file__).parent / "fixtures" / "devices"
MiB = 1 << 20
GiB = 1 << 30


def device(name: str) -> DeviceInfo:
    return from_dict(json.loads((FIXTURES / name).read_text()))


def model(
    name: str,
    quant: str,
    file_size: int,
    n_params: int,
    n_layer: int,
    n_embd: int,
    n_vocab: int,
    n_head: int,
    n_kv: int,
) -> ModelInfo:
    return ModelInfo(
        path=Path(f"/models/{name}.gguf"),
        name=name,
        architecture="llama",
        quant=quant,
        file_size=file_size,
        n_params=n_params,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=(n_kv,) * n_layer,
        head_dim_k=n_embd // n_head,
        head_dim_v=n_embd // n_head,
        n_ctx_train=4096,
        n_vocab=n_vocab,
        sliding_window=0,
        chat_template=None,
        bos_token_id=1,
        eos_token_id=2,
        add_bos=True,
    )


# Sizes as published for these GGUFs.
LLAMA32_3B_Q4KM = model(
    "llama-3.2-3b", "Q4_K_M", 2_019_377_696, 3_212_749_824, 28, 3072, 128256, 24, 8
)
LLAMA2_7B_Q4_0 = model("llama-2-7b", "Q4_0", 3_825_065_984, 6_738_415_616, 32, 4096, 32000, 32, 32)
LLAMA2_13B_Q4KM = model(
    "llama-2-13b", "Q4_K_M", 7_865_956_224, 13_015_864_320, 40, 5120, 32000, 40, 40
)
LLAMA2_7B_Q8_0 = replace(LLAMA2_7B_Q4_0, quant="Q8_0", file_size=7_161_089_728)


@pytest.fixture(scope="module")
def smollm2(model_path: Path) -> ModelInfo:
    return read_model_info(model_path)


def _fits(p: Placement, free: int) -> bool:
    return p.gpu_bytes <= free - vram_margin(free)


# -- (1) Mac, Apple M2, 16 GB, Metal build -------------------------------------------------
def test_m2_runs_a_7b_fully_on_metal() -> None:
    mac = device("mac_m2_metal.json")
    kv = LLAMA2_7B_Q4_0.kv_bytes(4096)
    p = place(mac, LLAMA2_7B_Q4_0, kv_bytes=kv)
    assert (p.backend, p.device, p.offload) == ("llama.cpp", "metal", "full")
    assert p.n_gpu_layers == LLAMA2_7B_Q4_0.n_layer + 1 and p.kv_on_gpu
    assert p.n_threads == 4  # performance cores only
    assert p.weights_on_gpu_bytes == LLAMA2_7B_Q4_0.file_size
    assert _fits(p, mac.gpus[0].free_bytes)
    assert not any("Q4_0" in a for a in p.advice)  # no requantising advice on a GPU


def test_m2_k_quant_on_metal_gets_no_quant_advice() -> None:
    p = place(device("mac_m2_metal.json"), LLAMA32_3B_Q4KM, kv_bytes=LLAMA32_3B_Q4KM.kv_bytes(4096))
    assert p.device == "metal" and p.offload == "full"
    assert not any("requantise" in a for a in p.advice)


def test_m2_without_metal_build_falls_back_and_says_how_to_fix() -> None:
    mac = device("mac_m2_metal.json")
    cpu_build = tuple(
        replace(b, gpu_offload=False, providers=("CPU",)) if b.name == "llama.cpp" else b
        for b in mac.backends
    )
    m = LLAMA2_7B_Q4_0
    p = place(replace(mac, backends=cpu_build), m, kv_bytes=m.kv_bytes(2048))
    assert p.device == "cpu" and p.n_gpu_layers == 0 and p.offload == "none"
    assert any("-DGGML_METAL=on" in a for a in p.advice)


# -- (2) Linux x86, RTX 2060 6 GB (5.5 GB free), CUDA build ----------------------------------
def test_rtx2060_fits_a_3b_fully() -> None:
    box = device("linux_rtx2060_cuda.json")
    p = place(box, LLAMA32_3B_Q4KM, kv_bytes=LLAMA32_3B_Q4KM.kv_bytes(4096))
    assert (p.device, p.offload, p.n_gpu_layers) == ("cuda:0", "full", 29)
    assert p.n_threads == 8 and p.kv_on_gpu
    assert _fits(p, box.gpus[0].free_bytes)
    assert not any("requantise" in a for a in p.advice)


def test_rtx2060_offloads_part_of_a_13b() -> None:
    box = device("linux_rtx2060_cuda.json")
    m = LLAMA2_13B_Q4KM
    kv = m.kv_bytes(2048)
    p = place(box, m, kv_bytes=kv)
    assert p.device == "cuda:0" and p.offload == "partial"
    assert 0 < p.n_gpu_layers < m.n_layer
    free = box.gpus[0].free_bytes
    usable = free - vram_margin(free)
    assert _fits(p, free)
    # As many whole layers as fit: one more would not.
    assert p.gpu_bytes + layer_bytes(m) + kv / m.n_layer > usable
    assert p.weights_on_gpu_bytes == p.n_gpu_layers * layer_bytes(m)
    assert any(f"only {p.n_gpu_layers} of 40 layers" in a for a in p.advice)


def test_rtx2060_cpu_when_asked_gets_avx2_advice() -> None:
    p = place(device("linux_rtx2060_cuda.json"), LLAMA2_13B_Q4KM, kv_bytes=0, prefer="cpu")
    assert (p.device, p.n_gpu_layers, p.weights_on_gpu_bytes, p.kv_on_gpu) == ("cpu", 0, 0, False)
    assert any("requantise to Q4_0" in a and "AVX2" in a for a in p.advice)


def test_rtx2060_cuda_index_and_unknown_gpu() -> None:
    box = device("linux_rtx2060_cuda.json")
    assert place(box, LLAMA32_3B_Q4KM, kv_bytes=0, prefer="cuda:0").device == "cuda:0"
    with pytest.raises(BackendUnavailable):
        place(box, LLAMA32_3B_Q4KM, kv_bytes=0, prefer="cuda:1")
    with pytest.raises(BackendUnavailable):
        place(box, LLAMA32_3B_Q4KM, kv_bytes=0, prefer="metal")


def test_model_far_larger_than_vram_and_ram() -> None:
    box = device("linux_rtx2060_cuda.json")
    huge = model("llama-70b", "Q4_0", 38_872_471_552, 68_976_648_192, 80, 8192, 32000, 64, 8)
    p = place(box, huge, kv_bytes=huge.kv_bytes(4096))
    assert p.offload == "partial" and 0 < p.n_gpu_layers < 20
    assert any("expect paging" in a for a in p.advice)  # the rest exceeds the 26 GB of free RAM


def test_nothing_fits_a_tiny_gpu_means_cpu() -> None:
    box = device("linux_rtx2060_cuda.json")
    tiny = replace(box.gpus[0], free_bytes=300 * MiB)
    p = place(replace(box, gpus=(tiny,)), LLAMA2_13B_Q4KM, kv_bytes=LLAMA2_13B_Q4KM.kv_bytes(2048))
    assert (p.device, p.n_gpu_layers, p.offload) == ("cpu", 0, "none")
    assert "not one layer fits" in p.reason


def test_two_gpus_pick_the_one_with_more_free_memory() -> None:
    box = device("linux_rtx2060_cuda.json")
    second = replace(
        box.gpus[0], name="RTX 3090", index=1, total_bytes=24 * GiB, free_bytes=23 * GiB
    )
    m = LLAMA2_13B_Q4KM
    p = place(replace(box, gpus=(box.gpus[0], second)), m, kv_bytes=m.kv_bytes(2048))
    assert (p.device, p.offload) == ("cuda:1", "full")


# -- (3) Raspberry-Pi-class Cortex-A72, 4 GB, NEON, no GPU --------------------------------
def test_pi_runs_on_cpu_with_four_threads_when_idle(smollm2: ModelInfo) -> None:
    pi = device("rpi4_cortex_a72.json")
    p = place(pi, smollm2, kv_bytes=smollm2.kv_bytes(1024))
    assert (p.backend, p.device, p.n_gpu_layers, p.n_threads) == ("llama.cpp", "cpu", 0, 4)
    assert p.offload == "none" and not p.kv_on_gpu and p.weights_on_gpu_bytes == 0
    tip = [a for a in p.advice if "requantise to Q4_0" in a]
    assert tip and "without dot-product" in tip[0]  # the A72 gets no repacked kernels


def test_pi_uses_fewer_threads_when_busy(smollm2: ModelInfo) -> None:
    pi = device("rpi4_cortex_a72.json")
    busy = replace(pi, cpu=replace(pi.cpu, busy_percent=(100.0, 85.0, 4.0, 0.0)))
    p = place(busy, smollm2, kv_bytes=0)
    assert p.n_threads == 2
    assert any("2 of 4 cores are busy" in a for a in p.advice)
    assert place(busy, smollm2, kv_bytes=0, n_threads=3).n_threads == 3  # an explicit override wins


def test_pi_with_a_7b_warns_about_ram() -> None:
    m = LLAMA2_7B_Q4_0
    p = place(device("rpi4_cortex_a72.json"), m, kv_bytes=m.kv_bytes(2048))
    assert p.device == "cpu" and any("expect paging" in a for a in p.advice)
    assert not any("requantise" in a for a in p.advice)  # already Q4_0


def test_pi_with_dotprod_core_gets_the_repack_advice(smollm2: ModelInfo) -> None:
    pi = device("rpi4_cortex_a72.json")
    a76 = replace(pi, cpu=replace(pi.cpu, model="Cortex-A76", features=("dotprod", "fp16", "neon")))
    tip = [a for a in place(a76, smollm2, kv_bytes=0).advice if "requantise" in a]
    assert tip and "dot-product/i8mm" in tip[0]


def test_pi_has_no_gpu_to_prefer(smollm2: ModelInfo) -> None:
    with pytest.raises(BackendUnavailable):
        place(device("rpi4_cortex_a72.json"), smollm2, kv_bytes=0, prefer="gpu")


# -- (4) this machine, recorded with describe() ---------------------------------------------
def test_this_machine_recorded(smollm2: ModelInfo) -> None:
    box = device("this_machine.json")
    p = place(box, smollm2, kv_bytes=smollm2.kv_bytes(8 * 256 + 128))
    assert (p.backend, p.device, p.n_gpu_layers, p.offload) == ("llama.cpp", "cpu", 0, "none")
    assert p.n_threads == choose_threads(box.cpu) and 1 <= p.n_threads <= box.cpu.physical_cores
    # AVX2 without AVX-512, and a Q4_1 model:
    assert any("requantise to Q4_0" in a and "1.46x" in a for a in p.advice)


def test_this_machine_live(smollm2: ModelInfo) -> None:
    info = describe(measure_load=False)
    p = place(info, smollm2, kv_bytes=smollm2.kv_bytes(512))
    assert p.n_threads == info.cpu.threads_default
    if not info.gpus:
        assert p.device == "cpu" and p.n_gpu_layers == 0


def test_avx512_gets_quant_advice_and_q4_0_none(smollm2: ModelInfo) -> None:
    box = device("this_machine.json")
    avx512 = replace(box, cpu=replace(box.cpu, features=(*box.cpu.features, "avx512f")))
    # llama.cpp repacks Q4_0 wherever AVX2 is (AVX-512 CPUs included: 1.55x at 8 sequences, measured)
    assert any("requantise" in a and "NAME:q4_0" in a for a in place(avx512, smollm2, kv_bytes=0).advice)
    for quant in ("Q4_0", "Q8_0", "F16"):
        m = replace(smollm2, quant=quant)
        assert not any("requantise" in a for a in place(box, m, kv_bytes=0).advice)
    assert any("requantise" in a for a in place(box, LLAMA32_3B_Q4KM, kv_bytes=0).advice)


# -- inputs and estimates -------------------------------------------------------------------
def test_bad_inputs(smollm2: ModelInfo) -> None:
    box = device("this_machine.json")
    with pytest.raises(UsageError):
        place(box, smollm2, kv_bytes=-1)
    with pytest.raises(UsageError):
        place(box, smollm2, kv_bytes=0, prefer="tpu")
    with pytest.raises(UsageError):
        place(box, smollm2, kv_bytes=0, n_threads=0)
    gone = tuple(replace(b, installed=False) for b in box.backends)
    with pytest.raises(BackendUnavailable):
        place(replace(box, backends=gone), smollm2, kv_bytes=0)


def test_margin_rule() -> None:
    assert vram_margin(1 * GiB) == 256 * MiB
    assert vram_margin(5632 * MiB) == int(5632 * MiB * 0.10)


def test_compute_estimate_matches_llama_cpp(engine: object, smollm2: ModelInfo) -> None:
    session = engine.session(n_seqs=1, n_cells=256, max_batch=512)  # type: ignore[attr-defined]
    try:
        reported = session.ctx.reported.get("compute_mib")
        n_batch = session.ctx.n_batch  # llama.cpp caps the batch at the context size
    finally:
        session.close()
    assert reported is not None
    estimate = estimate_compute_bytes(smollm2, n_batch=n_batch) / MiB
    assert estimate == pytest.approx(reported, rel=0.15)
