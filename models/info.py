"""ModelInfo: the facts about a model file that planning and accounting need."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from edgescale.errors import InvalidModelFile
from edgescale.models.gguf_file import GGUFHeader, read_header, shown

# Bytes per element of the KV cache types llama.cpp offers for type_k / type_v.
KV_TYPE_BYTES: dict[str, float] = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


@dataclass(frozen=True)
class ModelInfo:
    """Architecture facts read from the GGUF header (no weights loaded)."""

    path: Path
    name: str
    architecture: str
    quant: str
    file_size: int
    n_params: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer
    head_dim_k: int
    head_dim_v: int
    n_ctx_train: int
    n_vocab: int
    sliding_window: int
    chat_template: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    add_bos: bool

    def kv_bytes_per_cell(self, type_k: str = "f16", type_v: str = "f16") -> float:
        """KV cache bytes one token position costs, over all layers."""
        per_elem_k = KV_TYPE_BYTES[type_k]
        per_elem_v = KV_TYPE_BYTES[type_v]
        return float(
            sum(h * (self.head_dim_k * per_elem_k + self.head_dim_v * per_elem_v) for h in self.n_head_kv)
        )

    def kv_bytes(self, cells: int, type_k: str = "f16", type_v: str = "f16") -> int:
        """n_layer x cells x n_kv_head x head_dim x (bytes_k + bytes_v).

        Exact for full-attention models. For models with sliding-window layers
        (Gemma 3) llama.cpp gives those layers min(cells, window x sequences +
        batch) cells, so this is an upper bound once the context exceeds that."""
        return int(round(cells * self.kv_bytes_per_cell(type_k, type_v)))


# Sane ranges for the numbers a model file declares: a corrupt header must not make
# edgescale plan, allocate or loop by a value no real model has.
_LIMITS: dict[str, tuple[int, int]] = {
    "block_count": (1, 4096),
    "embedding_length": (1, 1 << 20),
    "attention.head_count": (1, 4096),
    "attention.head_count_kv": (0, 4096),
    "attention.key_length": (1, 1 << 16),
    "attention.value_length": (1, 1 << 16),
    "context_length": (1, 1 << 26),
    "vocab_size": (1, 1 << 26),
    "attention.sliding_window": (0, 1 << 26),
}


def _number(header: GGUFHeader, value: object, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidModelFile(f"{header.path}: GGUF {shown(what)} is not an integer ({type(value).__name__})")
    if not lo <= value <= hi:
        raise InvalidModelFile(f"{header.path}: GGUF {shown(what)} = {value} is out of range [{lo}, {hi}]")
    return value


def _arch_int(header: GGUFHeader, arch: str, key: str, default: int | None = None) -> int:
    """``<arch>.<key>`` as an integer in its sane range; ``default`` when absent (None: required)."""
    value = header.get(f"{arch}.{key}")
    if value is None:
        if default is None:
            raise InvalidModelFile(f"{header.path}: GGUF lacks {shown(arch + '.' + key)}")
        return default
    lo, hi = _LIMITS[key]
    return _number(header, value, f"{arch}.{key}", lo, hi)


def _token_id(header: GGUFHeader, key: str, n_vocab: int) -> int | None:
    value = header.get(key)
    if value is None:
        return None
    return _number(header, value, key, 0, max(0, n_vocab - 1))


def model_info_from_header(header: GGUFHeader) -> ModelInfo:
    arch = header.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InvalidModelFile(f"{header.path}: GGUF has no general.architecture")
    n_layer = _arch_int(header, arch, "block_count")
    n_embd = _arch_int(header, arch, "embedding_length")
    n_head = _arch_int(header, arch, "attention.head_count")
    raw_kv = header.get(f"{arch}.attention.head_count_kv", n_head)
    lo, hi = _LIMITS["attention.head_count_kv"]
    if isinstance(raw_kv, list):
        if len(raw_kv) != n_layer:
            raise InvalidModelFile(f"{header.path}: GGUF has {len(raw_kv)} KV head counts for {n_layer} layers")
        n_head_kv = tuple(_number(header, h, f"{arch}.attention.head_count_kv", lo, hi) for h in raw_kv)
    else:
        n_head_kv = (_number(header, raw_kv, f"{arch}.attention.head_count_kv", lo, hi),) * n_layer
    head_dim_k = _arch_int(header, arch, "attention.key_length", max(1, n_embd // n_head))
    head_dim_v = _arch_int(header, arch, "attention.value_length", head_dim_k)
    tokens = header.array_lengths.get("tokenizer.ggml.tokens")
    n_vocab = tokens if tokens else _arch_int(header, arch, "vocab_size")
    counts = Counter(t.type_name for t in header.tensors if len(t.shape) >= 2)
    quant = _file_type_name(header.get("general.file_type"), counts)
    n_params = 0
    for t in header.tensors:
        n = 1
        for d in t.shape:
            n *= d
        n_params += n
    template = header.get("tokenizer.chat_template")
    name = header.get("general.name")
    return ModelInfo(
        path=header.path,
        name=name if isinstance(name, str) and name.strip() else header.path.stem,
        architecture=arch,
        quant=quant,
        file_size=header.file_size,
        n_params=n_params,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_dim_k,
        head_dim_v=head_dim_v,
        n_ctx_train=_arch_int(header, arch, "context_length", 2048),
        n_vocab=n_vocab,
        sliding_window=_arch_int(header, arch, "attention.sliding_window", 0),
        chat_template=template if isinstance(template, str) else None,
        bos_token_id=_token_id(header, "tokenizer.ggml.bos_token_id", n_vocab),
        eos_token_id=_token_id(header, "tokenizer.ggml.eos_token_id", n_vocab),
        add_bos=header.get("tokenizer.ggml.add_bos_token", True) is not False,
    )


def _file_type_name(file_type: object, counts: Counter[str]) -> str:
    from gguf import LlamaFileType

    if isinstance(file_type, int):
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    return counts.most_common(1)[0][0] if counts else "unknown"


def read_model_info(path: str | Path) -> ModelInfo:
    """Validate the file and return its ModelInfo (milliseconds, no weights read)."""
    return model_info_from_header(read_header(path))


# A template's family by its markers, the most specific first: Phi-4 writes ChatML's markers too,
# and Qwen 3 is ChatML with a <think> block.
_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("llama3", ("<|start_header_id|>",)),
    ("phi4", ("<|im_sep|>",)),
    ("qwen3", ("<|im_start|>", "<think>")),
    ("chatml", ("<|im_start|>",)),
    ("gemma", ("<start_of_turn>",)),
    ("phi3", ("<|user|>",)),
    ("phi3", ("<|end|>",)),
    ("mistral", ("[INST]",)),
)


def chat_template_family(template: str | None) -> str | None:
    """The family of a chat template by the turn markers it writes: llama3, phi4, qwen3, chatml,
    gemma, phi3 or mistral; "other" for a template with none of them, None for no template."""
    if not template:
        return None
    for family, markers in _FAMILIES:
        if all(marker in template for marker in markers):
            return family
    return "other"
