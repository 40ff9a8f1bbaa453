"""The small JSON file next to a converted ONNX model: what the runtime needs.

``edgescale convert`` writes it (``edgescale_onnx.json``); :class:`OnnxModelConfig`
reads it back and builds a :class:`ModelInfo` from it, so the planner and the
KV accounting see an ONNX model exactly as they see a GGUF one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgescale.errors import InvalidModelFile
from edgescale.models.info import ModelInfo

CONFIG_NAME = "edgescale_onnx.json"
MODEL_NAME = "model.onnx"
TOKENIZER_NAME = "tokenizer.json"
FORMAT = "edgescale-onnx"
FORMAT_VERSION = 1
# KV layouts the runtime knows: "gqa-shared" = GroupQueryAttention graphs whose
# past and present buffers can be one buffer (right-padded rows, written in place).
KV_LAYOUTS = ("gqa-shared",)


@dataclass(frozen=True)
class OnnxModelConfig:
    name: str
    architecture: str
    source_file: str
    source_quant: str
    n_params: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx_train: int
    max_positions: int
    sliding_window: int
    kv_layout: str
    kv_dtype: str
    bos_token_id: int | None
    eos_token_id: int | None
    eog_token_ids: tuple[int, ...]
    bos_token: str
    eos_token: str
    add_bos: bool
    chat_template: str | None
    model_file: str = MODEL_NAME
    tokenizer_file: str = TOKENIZER_NAME
    weights: dict[str, Any] = field(default_factory=dict)  # conversion summary (informational)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["eog_token_ids"] = list(self.eog_token_ids)
        return json.dumps(data, indent=2, ensure_ascii=False)

    def write(self, model_dir: Path) -> Path:
        path = model_dir / CONFIG_NAME
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, model_dir: Path) -> OnnxModelConfig:
        path = model_dir / CONFIG_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidModelFile(
                f"{model_dir}: not an edgescale ONNX model dir (no {CONFIG_NAME})"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidModelFile(f"{path}: unreadable config ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InvalidModelFile(f"{path}: not an {FORMAT} config")
        if data.get("format_version") != FORMAT_VERSION:
            raise InvalidModelFile(
                f"{path}: config version {data.get('format_version')} is not supported"
            )
        known = {f.name for f in fields(cls)}
        try:
            kwargs = {k: v for k, v in data.items() if k in known}
            kwargs["eog_token_ids"] = tuple(int(t) for t in kwargs.get("eog_token_ids", ()))
            cfg = cls(**kwargs)
        except TypeError as exc:
            raise InvalidModelFile(f"{path}: incomplete config ({exc})") from None
        if cfg.kv_layout not in KV_LAYOUTS:
            raise InvalidModelFile(f"{path}: KV layout {cfg.kv_layout!r} is not supported")
        for name in ("n_layer", "n_head", "n_head_kv", "head_dim", "n_vocab", "max_positions"):
            if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) <= 0:
                raise InvalidModelFile(f"{path}: {name} must be a positive integer")
        return cfg

    def model_info(self, model_dir: Path) -> ModelInfo:
        model_path = model_dir / self.model_file
        size = sum(
            p.stat().st_size
            for p in model_dir.iterdir()
            if p.is_file() and p.name.startswith(self.model_file)
        )
        return ModelInfo(
            path=model_path,
            name=self.name,
            architecture=self.architecture,
            quant=self.source_quant,
            file_size=size,
            n_params=self.n_params,
            n_layer=self.n_layer,
            n_embd=self.n_embd,
            n_head=self.n_head,
            n_head_kv=(self.n_head_kv,) * self.n_layer,
            head_dim_k=self.head_dim,
            head_dim_v=self.head_dim,
            n_ctx_train=min(self.n_ctx_train, self.max_positions),
            n_vocab=self.n_vocab,
            sliding_window=self.sliding_window,
            chat_template=self.chat_template,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            add_bos=self.add_bos,
        )
