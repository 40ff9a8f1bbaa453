"""Where a GGUF model runs on a described device: GPU layers, threads, advice (pure, no I/O).

GPU offload (llama.cpp's ``n_gpu_layers``):

* Free VRAM minus a safety margin of ``max(256 MiB, 10% of free)`` is what may
  be used (the margin covers the CUDA/Metal context, fragmentation and what
  other processes allocate meanwhile).
* **Full** when weights (the whole file) + KV cache + compute buffers fit:
  ``n_gpu_layers = n_layer + 1`` (every repeating layer and the output layer).
* Else **partial**: as many whole repeating layers as fit. A layer costs its
  weights, ``(file size - token embedding) / n_layer`` (the token embedding
  always stays on the CPU in llama.cpp; with a partial plan the output layer
  does too), plus its share of the KV cache (``kv_bytes / n_layer``: llama.cpp
  keeps an offloaded layer's KV on the GPU). Compute buffers are charged once.
* No usable GPU, or not even one layer fits: **none**, 0 layers, CPU.

A GPU is usable when the llama.cpp build supports GPU offload for its kind
(CUDA or Metal). Threads follow the free-core rule (``devices.threads``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from edgescale.devices.facts import BackendInfo, CpuInfo, DeviceInfo, GpuInfo, human_bytes
from edgescale.devices.threads import candidate_cpus, choose_threads
from edgescale.errors import BackendUnavailable, UsageError
from edgescale.models.info import ModelInfo
from edgescale.runtime.memory import llama_compute_bytes_per_token

MiB = 1 << 20
VRAM_MARGIN_MIN = 256 * MiB
VRAM_MARGIN_FRACTION = 0.10
DEFAULT_N_BATCH = 512  # the largest batch runtime.llama_engine gives a context
BUSY_PERCENT = 50.0  # as devices.cpu.BUSY_THRESHOLD

Offload = Literal["full", "partial", "none"]
_X86 = frozenset({"x86_64", "amd64", "x86", "i386", "i686"})
_ARM = frozenset({"arm64", "aarch64", "armv7l", "armv8l", "armv6l"})
_BUILD_NAMES = {"cuda": ("CUDA",), "metal": ("Metal", "MTL")}
_REINSTALL = "pip install --force-reinstall --no-cache-dir llama-cpp-python"
_INSTALL = {
    "cuda": f'CMAKE_ARGS="-DGGML_CUDA=on" {_REINSTALL}',
    "metal": f'CMAKE_ARGS="-DGGML_METAL=on" {_REINSTALL}',
}
Q4_0_SPEEDUP_NOTE = (
    "measured with 2 threads: SmolLM2-135M Q4_1 -> Q4_0 decoded batches of 8 1.46x faster on an AVX2 "
    "EPYC and 1.55x on an AVX-512 Xeon, 64 sequences in KV streams 1.7x"
)


@dataclass(frozen=True)
class Placement:
    backend: str  # "llama.cpp"
    device: str  # "cpu", "cuda:0", "metal"
    n_gpu_layers: int
    n_threads: int
    weights_on_gpu_bytes: int
    kv_on_gpu: bool  # the KV of offloaded layers sits on the GPU (all of it when offload == "full")
    reason: str
    advice: tuple[str, ...]
    offload: Offload = "none"
    gpu_bytes: int = 0  # weights + KV + compute buffers planned on the GPU


def vram_margin(free_bytes: int) -> int:
    return max(VRAM_MARGIN_MIN, int(free_bytes * VRAM_MARGIN_FRACTION))


def bytes_per_param(model: ModelInfo) -> float:
    return model.file_size / max(model.n_params, 1)


def embedding_bytes(model: ModelInfo) -> int:
    """Token embedding matrix, at the file's average bytes per parameter."""
    return int(model.n_vocab * model.n_embd * bytes_per_param(model))


def layer_bytes(model: ModelInfo) -> int:
    """Weights of one repeating layer: (file - token embedding) / n_layer.

    An untied output matrix is spread over the layers here, which overstates a
    layer slightly: the partial plan errs towards fewer layers.
    """
    return max(1, int((model.file_size - embedding_bytes(model)) / max(model.n_layer, 1)))


def estimate_compute_bytes(model: ModelInfo, *, n_batch: int = DEFAULT_N_BATCH) -> int:
    """llama.cpp's compute buffer for a batch of ``n_batch`` tokens (runtime.memory's formula;
    llama.cpp caps n_batch at the context size)."""
    return llama_compute_bytes_per_token(model) * n_batch


def _parse_prefer(prefer: str | None) -> tuple[str | None, int | None]:
    if prefer is None:
        return None, None
    p = prefer.strip().lower()
    if p in ("", "auto"):
        return None, None
    if p in ("cpu", "gpu", "cuda", "metal"):
        return p, None
    if p.startswith("cuda:") and p[5:].isdigit():
        return "cuda", int(p[5:])
    raise UsageError(f"unknown device {prefer!r}: use auto, cpu, gpu, cuda, cuda:N or metal")


def _build_supports(llama: BackendInfo | None, gpu: GpuInfo) -> bool:
    """Whether this llama.cpp build can offload to ``gpu``'s kind."""
    if llama is None or not llama.installed or not llama.gpu_offload:
        return False
    named = [p for p in llama.providers if p not in ("CPU", "BLAS", "RPC")]
    if not named:  # the build offloads but does not say to what
        return True
    return any(name in named for name in _BUILD_NAMES.get(gpu.backend, ()))


def _pick_gpu(
    device: DeviceInfo, llama: BackendInfo | None, kind: str | None, index: int | None
) -> tuple[GpuInfo | None, list[str]]:
    """The GPU to use (most free memory), or None and advice on why none is usable."""
    if kind == "cpu":
        return None, []
    gpus = [g for g in device.gpus if kind in (None, "gpu") or g.backend == kind]
    if index is not None:
        gpus = [g for g in gpus if g.index == index]
    usable = [g for g in gpus if _build_supports(llama, g)]
    if usable:
        return max(usable, key=lambda g: (g.free_bytes, -g.index)), []
    advice = [
        f"{g.name} is present but this llama.cpp build has no {g.backend.upper()} offload; "
        f"reinstall it with {_INSTALL[g.backend]}"
        for g in gpus
        if g.backend in _INSTALL
    ]
    if kind not in (None, "cpu"):
        wanted = f"{kind}:{index}" if index is not None else kind
        detail = "; ".join(advice) if advice else "no such GPU on this device"
        raise BackendUnavailable(f"device {wanted!r} is not usable: {detail}")
    return None, advice


def _gpu_name(gpu: GpuInfo) -> str:
    return f"cuda:{gpu.index}" if gpu.backend == "cuda" else gpu.backend


def _thread_note(cpu: CpuInfo, n_threads: int) -> str | None:
    ids = candidate_cpus(cpu)
    busy = [i for i in ids if i < len(cpu.busy_percent) and cpu.busy_percent[i] >= BUSY_PERCENT]
    if not busy:
        return None
    kind = "big cores" if cpu.performance_cpus else "cores"
    return (
        f"{len(busy)} of {len(ids)} {kind} are busy with other work: using {n_threads} thread(s) "
        "(llama.cpp threads wait for the slowest one every layer)"
    )


def quant_advice(device: DeviceInfo, model: ModelInfo) -> str | None:
    """Requantising advice for CPU decoding, or None.

    llama.cpp repacks Q4_0 weights at load into interleaved kernels on AVX2
    (q4_0_8x8) and on ARM with dot-product / i8mm (q4_0_4x4 / 4x8); Q4_1 has no
    repacked kernel, and of the K-quants only Q4_K tensors are repacked
    (q4_K_8x8, checked in llama-cpp-python 0.3.36's load log).
    """
    quant = model.quant.upper()
    is_k = "_K" in quant
    if quant != "Q4_1" and not is_k:
        return None
    cpu = device.cpu
    if quant == "Q4_1":
        what = "Q4_1 has no repacked kernel"
    else:
        what = (
            f"a K-quant ({quant}) is repacked only in its Q4_K tensors, "
            "not in its Q2_K/Q3_K/Q5_K/Q6_K ones"
        )
    head = "requantise to Q4_0 for CPU decoding"
    tail = (
        "quantise from the F16/BF16 original where you have it: re-quantising a 4-bit file "
        "compounds two roundings (SmolLM2 Q4_1 -> Q4_0: perplexity 1.15x; quality drops a little "
        "against Q4_K/Q5/Q6 too); a catalog model runs as such a copy with NAME:q4_0"
    )
    if cpu.arch in _X86 and cpu.has("avx2"):
        return (
            f"{head}: on AVX2 (and AVX-512) llama.cpp repacks Q4_0 into 8x8 interleaved "
            f"kernels at load, while {what} ({Q4_0_SPEEDUP_NOTE}); {tail}"
        )
    if cpu.arch in _ARM and cpu.has("neon"):
        if cpu.has("dotprod") or cpu.has("i8mm"):
            return (
                f"{head}: on ARM with NEON dot-product/i8mm llama.cpp repacks Q4_0 into "
                f"interleaved 4x4/4x8 kernels at load, while {what}; {tail}"
            )
        return (
            f"{head}: this core has NEON without dot-product instructions, so llama.cpp "
            "repacks nothing here, but Q4_0 is the cheapest 4-bit format to unpack and smaller "
            "than Q4_1 (4.5 against 5.0 bits per weight), which counts where memory bandwidth "
            f"bounds decoding; {tail}"
        )
    return None


def place(
    device: DeviceInfo,
    model: ModelInfo,
    *,
    kv_bytes: int,
    compute_bytes: int | None = None,
    prefer: str | None = None,
    n_threads: int | None = None,
) -> Placement:
    """Decide GPU layers and threads for ``model`` with a KV cache of ``kv_bytes``.

    ``compute_bytes``: llama.cpp's compute buffers when known (``Context.reported``),
    else None for :func:`estimate_compute_bytes`. ``prefer``: None/"auto" (a usable
    GPU if any), "cpu", "gpu", "cuda", "cuda:N" or "metal"; a GPU asked for and not
    usable raises BackendUnavailable. ``n_threads`` overrides the free-core rule.
    """
    if kv_bytes < 0 or (compute_bytes is not None and compute_bytes < 0):
        raise UsageError("kv_bytes and compute_bytes must be >= 0")
    if n_threads is not None and n_threads < 1:
        raise UsageError("n_threads must be at least 1")
    llama = device.backend("llama.cpp")
    if llama is not None and not llama.installed:
        raise BackendUnavailable(
            "llama-cpp-python is not installed: pip install 'llama-cpp-python>=0.3.16,<0.4'"
        )
    kind, index = _parse_prefer(prefer)
    threads = n_threads if n_threads is not None else choose_threads(device.cpu)
    if compute_bytes is None:
        # llama.cpp caps the batch at the context; no KV given: assume the largest batch.
        cells = int(kv_bytes / max(model.kv_bytes_per_cell(), 1.0))
        n_batch = min(DEFAULT_N_BATCH, cells) if cells else DEFAULT_N_BATCH
        compute = estimate_compute_bytes(model, n_batch=n_batch)
    else:
        compute = compute_bytes
    gpu, advice = _pick_gpu(device, llama, kind, index)
    note = _thread_note(device.cpu, threads) if n_threads is None else None
    if note:
        advice.append(note)
    placement = _on_gpu(gpu, model, kv_bytes, compute, threads, advice) if gpu is not None else None
    if placement is None:
        if kind == "cpu":
            why = "CPU asked for"
        elif gpu is None:
            why = "no usable GPU"
        else:
            why = f"not one layer fits in {human_bytes(gpu.free_bytes)} free on {gpu.name}"
        tip = quant_advice(device, model)
        if tip:
            advice.append(tip)
        reason = f"{why}: CPU, {threads} thread(s)"
        placement = Placement("llama.cpp", "cpu", 0, threads, 0, False, reason, ())
    ram_need = _ram_need(placement, model, kv_bytes, compute)
    if ram_need > device.ram_available:
        advice.append(
            f"needs about {human_bytes(ram_need)} of RAM but "
            f"{human_bytes(device.ram_available)} is available: "
            "expect paging; use a smaller quant or fewer samples"
        )
    return replace(placement, advice=tuple(advice))


def _ram_need(placement: Placement, model: ModelInfo, kv_bytes: int, compute: int) -> int:
    """RAM the CPU side needs (the token embedding always stays there). On Metal
    (unified memory) the GPU check already counted everything."""
    if placement.offload == "none":
        return model.file_size + kv_bytes + compute
    if placement.device == "metal":
        return 0
    frac = min(placement.n_gpu_layers, model.n_layer) / max(model.n_layer, 1)
    weights = max(model.file_size - placement.weights_on_gpu_bytes, embedding_bytes(model))
    return weights + int(kv_bytes * (1 - frac))


def _on_gpu(
    gpu: GpuInfo, model: ModelInfo, kv_bytes: int, compute: int, threads: int, advice: list[str]
) -> Placement | None:
    margin = vram_margin(gpu.free_bytes)
    usable = gpu.free_bytes - margin
    dev = _gpu_name(gpu)
    full = model.file_size + kv_bytes + compute
    budget = f"{human_bytes(gpu.free_bytes)} free on {gpu.name} less a {human_bytes(margin)} margin"
    if full <= usable:
        return Placement(
            "llama.cpp",
            dev,
            model.n_layer + 1,
            threads,
            model.file_size,
            True,
            f"all {model.n_layer} layers and the output fit: {human_bytes(full)} in {budget}",
            (),
            offload="full",
            gpu_bytes=full,
        )
    per_layer = layer_bytes(model) + kv_bytes / max(model.n_layer, 1)
    n = int(math.floor((usable - compute) / per_layer)) if usable > compute else 0
    n = max(0, min(n, model.n_layer))
    if n == 0:
        return None
    weights = n * layer_bytes(model)
    on_gpu = weights + int(kv_bytes * n / max(model.n_layer, 1)) + compute
    advice.append(
        f"only {n} of {model.n_layer} layers fit on {gpu.name}; the rest decode on the CPU, "
        "and the slowest part sets the pace: a smaller quant, or fewer samples / a shorter "
        f"context (less KV), would fit fully (needs {human_bytes(full)}, "
        f"{human_bytes(usable)} usable)"
    )
    return Placement(
        "llama.cpp",
        dev,
        n,
        threads,
        weights,
        True,
        f"{n} of {model.n_layer} layers fit: {human_bytes(on_gpu)} in {budget}; "
        "output and the rest on the CPU",
        (),
        offload="partial",
        gpu_bytes=on_gpu,
    )
