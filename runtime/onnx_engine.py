"""The ONNX Runtime backend: a converted model directory behind the Engine protocol.

A model directory (written by ``edgescale convert``) holds ``model.onnx`` (a
decoder with past, ``GroupQueryAttention`` KV layout), ``tokenizer.json`` and
``edgescale_onnx.json``. Decode sessions are :class:`OnnxSession` (see
``onnx_session`` for the KV layout: right-padded rows, written in place).

The execution provider is a parameter (``providers=["CUDAExecutionProvider",
"CPUExecutionProvider"]`` with onnxruntime-gpu, CoreML on macOS builds). The KV
rows are numpy buffers in host memory bound with IO binding, so another
provider runs correctly but copies them every step: keeping them on the device
(device OrtValues and device-side row copies) is the step after this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgescale.errors import BackendUnavailable, ContextOverflow, InvalidModelFile, UsageError
from edgescale.models.info import ModelInfo
from edgescale.runtime.chat import render_chat, user_messages
from edgescale.runtime.onnx_config import OnnxModelConfig
from edgescale.runtime.onnx_errors import first_line, ort_exceptions
from edgescale.runtime.onnx_session import OnnxSession
from edgescale.runtime.onnx_tokenizer import OnnxTokenizer

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
_REQUIRED_INPUTS = ("input_ids", "attention_mask", "position_ids", "num_logits_to_keep")


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(
            f"onnxruntime is not usable ({exc}); install it: pip install 'onnxruntime>=1.32' 'tokenizers>=0.23'"
        ) from None
    return onnxruntime


def _session_options(ort: Any, n_threads: int, spin: bool) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = n_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return so


class OnnxEngine:
    """A converted model loaded in ONNX Runtime."""

    backend_name = "onnxruntime"

    def __init__(
        self,
        model_dir: Path,
        config: OnnxModelConfig,
        ort_session: Any,
        tokenizer: OnnxTokenizer,
        *,
        n_threads: int,
        providers: tuple[str, ...],
        batch_invariant: bool = False,
    ) -> None:
        self.model_dir = model_dir
        self.config = config
        self.info: ModelInfo = config.model_info(model_dir)
        self.ort_session = ort_session
        self.tokenizer = tokenizer
        self.n_threads = n_threads
        self.providers = providers
        self.batch_invariant = batch_invariant
        # For the planner's memory model (runtime.memory): the KV cache is float32 and
        # stores each sequence's row in full (a prompt shared by k rows is stored k times).
        self.kv_type = "f32"
        self.kv_layout = "rows"  # one KV row per sequence, the prompt copied into each
        from edgescale.runtime.memory import process_rss

        # The process without the weights, measured right after loading (onnxruntime
        # holds the weights in its own memory, not as a file mapping).
        self.baseline_anon_bytes = max(0, process_rss() - self.info.file_size)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        n_threads: int,
        providers: Sequence[str] | None = None,
        spin: bool = True,
        batch_invariant: bool = False,
    ) -> OnnxEngine:
        """Load a converted model directory. ``providers``: ONNX Runtime execution
        providers in order of preference (default CPU); unknown ones are refused.
        ``spin``: let idle worker threads spin (faster on a quiet machine).
        ``batch_invariant``: decode a lone sequence as two rows so that it gets the
        same logits as in a k-batch (ONNX Runtime's single-row int8 kernel rounds
        differently; costs ~25% at k=1, see ``onnx_session``)."""
        path = Path(model_dir)
        if not path.is_dir():
            raise InvalidModelFile(
                f"{path}: not a directory (an ONNX model is a directory from `edgescale convert`)"
            )
        if n_threads < 1:
            raise UsageError("n_threads must be at least 1")
        config = OnnxModelConfig.read(path)
        model_file = path / config.model_file
        if not model_file.is_file():
            raise InvalidModelFile(f"{path}: {config.model_file} is missing")
        ort = _import_ort()
        wanted = tuple(providers) if providers else DEFAULT_PROVIDERS
        available = set(ort.get_available_providers())
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendUnavailable(
                f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
                f"(has: {', '.join(sorted(available))})"
            )
        tokenizer = OnnxTokenizer(
            path / config.tokenizer_file,
            bos_token_id=config.bos_token_id,
            add_bos=config.add_bos,
            eog_ids=frozenset(config.eog_token_ids),
        )
        if tokenizer.n_vocab != config.n_vocab:
            raise InvalidModelFile(
                f"{path}: tokenizer has {tokenizer.n_vocab} tokens, the model {config.n_vocab}"
            )
        try:
            session = ort.InferenceSession(
                str(model_file), _session_options(ort, n_threads, spin), providers=list(wanted)
            )
        except ort_exceptions() as exc:
            raise InvalidModelFile(
                f"{model_file}: onnxruntime cannot load it ({first_line(exc)})"
            ) from None
        names = {i.name for i in session.get_inputs()} | {
            i.name for i in session.get_overridable_initializers()
        }
        lacking = [n for n in _REQUIRED_INPUTS if n not in names]
        if lacking or f"past_key_values.{config.n_layer - 1}.key" not in names:
            raise InvalidModelFile(
                f"{model_file}: not a decoder-with-past graph (missing inputs {lacking})"
            )
        return cls(
            path,
            config,
            session,
            tokenizer,
            n_threads=n_threads,
            providers=wanted,
            batch_invariant=batch_invariant,
        )

    @property
    def backend_version(self) -> str:
        return str(_import_ort().__version__)

    def tokenize(
        self, text: str, *, add_special: bool = False, parse_special: bool = True
    ) -> list[int]:
        return self.tokenizer.tokenize(text, add_special=add_special, parse_special=parse_special)

    def token_bytes(self, token: int) -> bytes:
        return self.tokenizer.token_bytes(token)

    def is_eog(self, token: int) -> bool:
        return self.tokenizer.is_eog(token)

    def format_prompt(
        self, prompt: str, *, chat: bool = True, system: str | None = None
    ) -> list[int]:
        template = self.info.chat_template
        bos, eos = self.config.bos_token, self.config.eos_token
        if chat and template:
            text = render_chat(
                template, user_messages(prompt, system), bos_token=bos, eos_token=eos
            )
        else:
            text = prompt if not system else f"{system}\n\n{prompt}"
        # Templates often write the BOS text themselves; add it only when they did not.
        has_bos = bool(bos) and text.startswith(bos)
        return self.tokenize(
            text, add_special=self.info.add_bos and not has_bos, parse_special=True
        )

    def session(self, *, n_seqs: int, n_cells: int, max_batch: int) -> OnnxSession:
        if n_seqs < 1:
            raise UsageError("a session needs at least one sequence")
        if n_cells > self.info.n_ctx_train:
            raise ContextOverflow(
                f"the query needs {n_cells} KV cells but the model's context is {self.info.n_ctx_train}; "
                "lower --max-tokens or -k"
            )
        return OnnxSession(
            self, n_seqs=n_seqs, n_cells=n_cells, batch_invariant=self.batch_invariant
        )

    def weights_bytes(self) -> int:
        return self.info.file_size

    def kv_bytes_needed(
        self,
        *,
        n_seqs: int,
        prompt_tokens: int,
        max_new_tokens: int,
        probe_slots: int = 0,
        probe_tokens: int = 0,
    ) -> int:
        """Peak KV bytes of a query in this backend's layout: every row holds the whole
        prompt, and a probe's fork copies its parent's row before adding its own tokens."""
        row = prompt_tokens + max_new_tokens
        cells = (n_seqs + probe_slots) * row + probe_slots * probe_tokens
        return self.info.kv_bytes(cells, self.kv_type, self.kv_type)

    def close(self) -> None:
        self.ort_session = None

    def __enter__(self) -> OnnxEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
