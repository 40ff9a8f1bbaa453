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
from typing import TYPE_CHECKING, Any

from edgescale.errors import BackendUnavailable, InvalidModelFile, UsageError
from edgescale.models.info import ModelInfo
from edgescale.runtime.chat import ChatText
from edgescale.runtime.constraints import Vocab, hf_vocab
from edgescale.runtime.engine import MemoryLayout, check_session_shape
from edgescale.runtime.kv_types import KvType
from edgescale.runtime.onnx_config import OnnxModelConfig
from edgescale.runtime.onnx_errors import first_line, ort_exceptions
from edgescale.runtime.onnx_session import OnnxSession
from edgescale.runtime.onnx_tokenizer import OnnxTokenizer

if TYPE_CHECKING:
    from edgescale.runtime.backends import LoadRequest

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
MAX_SEQUENCES = 256  # as llama.cpp's: rows are memory, and every row holds its prompt
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


class OnnxEngine(ChatText):
    """A converted model loaded in ONNX Runtime."""

    backend_name = "onnx"

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
        self.vocab = tokenizer
        self._vocab: Vocab | None = None  # for constrained decoding, built when first asked for
        self.bos_text, self.eos_text = config.bos_token, config.eos_token
        self.n_threads = n_threads
        self.providers = providers
        self.batch_invariant = batch_invariant
        self.n_gpu_layers = 0  # an execution provider runs the whole graph; no layer split
        self.max_sequences = MAX_SEQUENCES
        # The KV cache is float32 and stores each sequence's row in full (a prompt shared by
        # k rows is stored k times). ONNX Runtime's arena per decode call, measured on
        # SmolLM2 (VmHWM after prefills of 32, 256 and 512 tokens, the KV cache taken
        # off): about 60 KB per prompt token at 512 tokens: the attention scores of a chunk
        # (n_head x chunk floats per token) and some 16 x n_embd floats of activations
        # (logits only for each row's last token).
        self.memory_layout = MemoryLayout(
            kv_type="f32", prompt_per_sequence=True, cell_pad=1,
            compute_per_token=4 * 16 * self.info.n_embd, compute_per_token_sq=4 * self.info.n_head, name="rows",
        )
        self.kv_layouts = {"rows": self.memory_layout}
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

    def kv_type_refusal(self, kv: KvType) -> str | None:
        if kv.name == self.memory_layout.kv_type:
            return None
        return (f"the onnx backend keeps its KV cache in {self.memory_layout.kv_type}, the converted graph's type; "
                f"a {kv.name} cache (--kv-type) needs the llama.cpp backend")

    def session(self, *, n_seqs: int, n_cells: int, max_batch: int, kv_layout: str | None = None,
                kv_type: KvType | None = None) -> OnnxSession:
        if kv_layout not in (None, "rows"):
            raise UsageError(f"the onnx backend keeps one KV row per sequence (layout 'rows'), not {kv_layout!r}")
        refusal = self.kv_type_refusal(kv_type) if kv_type is not None else None
        if refusal is not None:
            raise UsageError(refusal)
        check_session_shape(self.info, n_seqs, n_cells)
        return OnnxSession(self.config, self.info, self.ort_session, n_seqs=n_seqs, n_cells=n_cells,
                           batch_invariant=self.batch_invariant)

    def constraint_vocab(self) -> Vocab:
        if self._vocab is None:
            self._vocab = hf_vocab(self.tokenizer.json(), self.config.n_vocab, sorted(self.tokenizer.eog_ids))
        return self._vocab

    def weights_bytes(self) -> int:
        return self.info.file_size

    def close(self) -> None:
        self.ort_session = None

    def __enter__(self) -> OnnxEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_model_dir(model: str | Path | None) -> Path:
    """An ONNX model reference is the directory ``edgescale convert`` wrote."""
    if model is None:
        raise UsageError("the onnx backend needs a model directory (made by `edgescale convert`)")
    return Path(model).expanduser().resolve()


def load_onnx(request: LoadRequest) -> OnnxEngine:
    """The registry's loader: a directory made by ``edgescale convert``."""
    return OnnxEngine.load(resolve_model_dir(request.model), n_threads=request.threads)
