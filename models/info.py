"""ModelInfo: the facts about a model file that planning and accounting need."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from edgescale.errors import InvalidModelFile
from edgescale.models.gguf_file import GGUFHeader, read_header

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


def _arch_key(header: GGUFHeader, arch: str, key: str, default: object = None) -> object:
    return header.get(f"{arch}.{key}", default)


def model_info_from_header(header: GGUFHeader) -> ModelInfo:
    arch = header.get("general.architecture")
    if not isinstance(arch, str):
        raise InvalidModelFile(f"{header.path}: GGUF has no general.architecture")
    try:
        n_layer = int(_arch_key(header, arch, "block_count"))  # type: ignore[arg-type]
        n_embd = int(_arch_key(header, arch, "embedding_length"))  # type: ignore[arg-type]
        n_head = int(_arch_key(header, arch, "attention.head_count"))  # type: ignore[arg-type]
    except TypeError:
        raise InvalidModelFile(
            f"{header.path}: GGUF lacks {arch}.block_count / embedding_length / attention.head_count"
        ) from None
    raw_kv = _arch_key(header, arch, "attention.head_count_kv", n_head)
    n_head_kv = tuple(int(h) for h in raw_kv) if isinstance(raw_kv, list) else (int(raw_kv),) * n_layer  # type: ignore[arg-type]
    head_dim_k = int(_arch_key(header, arch, "attention.key_length", n_embd // max(n_head, 1)))  # type: ignore[arg-type]
    head_dim_v = int(_arch_key(header, arch, "attention.value_length", head_dim_k))  # type: ignore[arg-type]
    n_vocab = header.array_lengths.get("tokenizer.ggml.tokens") or int(
        _arch_key(header, arch, "vocab_size", 0)  # type: ignore[arg-type]
    )
    counts = Counter(t.type_name for t in header.tensors if len(t.shape) >= 2)
    quant = _file_type_name(header.get("general.file_type"), counts)
    n_params = 0
    for t in header.tensors:
        n = 1
        for d in t.shape:
            n *= d
        n_params += n
    bos = header.get("tokenizer.ggml.bos_token_id")
    eos = header.get("tokenizer.ggml.eos_token_id")
    return ModelInfo(
        path=header.path,
        name=str(header.get("general.name") or header.path.stem),
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
        n_ctx_train=int(_arch_key(header, arch, "context_length", 2048)),  # type: ignore[arg-type]
        n_vocab=int(n_vocab),
        sliding_window=int(_arch_key(header, arch, "attention.sliding_window", 0) or 0),  # type: ignore[arg-type]
        chat_template=header.get("tokenizer.chat_template"),
        bos_token_id=int(bos) if bos is not None else None,
        eos_token_id=int(eos) if eos is not None else None,
        add_bos=bool(header.get("tokenizer.ggml.add_bos_token", True)),
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
