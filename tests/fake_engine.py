"""A scripted fake engine, only for pinning down strategy rules exactly.

Token ids are bytes (0-255), 256 is end-of-generation and 257 ends a prompt (the
fake's ``format_prompt`` appends it, so a prompt read in chunks through ``decode``
is known to be complete). Sample ``i`` of a prompt greedily "generates"
``scripts[i]`` (or ``scripts[prompt][i]`` when scripts are given per prompt text)
and then EOS; every row of logits puts its maximum on the scripted next byte, so
the real BatchGenerator, samplers, controllers and scheduler run unchanged on top.
A sample's index is its order among the sequences that share its prompt (the
first reads it, the others are forked from it). A probe (fork + cue) of sample
``i`` after ``n`` tokens answers ``probe(i, n)`` followed by "}". Backend claims
are never tested on this: it stands in for a model only in strategy-logic tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from edgescale.models.info import ModelInfo
from edgescale.runtime.backends import Backend, LoadRequest
from edgescale.runtime.engine import CellBook, MemoryLayout
from edgescale.runtime.kv_types import KvType

EOS = 256
PROMPT_END = 257
VOCAB = 258


def _info(path: Path) -> ModelInfo:
    return ModelInfo(
        path=path, name="fake", architecture="fake", quant="F32", file_size=0, n_params=0,
        n_layer=1, n_embd=8, n_head=1, n_head_kv=(1,), head_dim_k=4, head_dim_v=4, n_ctx_train=1 << 20,
        n_vocab=VOCAB, sliding_window=0, chat_template=None, bos_token_id=None, eos_token_id=EOS, add_bos=False,
    )


def _row(token: int, margin: float = 30.0) -> np.ndarray:
    row = np.zeros(VOCAB, dtype=np.float32)
    row[token] = margin  # far ahead of everything: greedy and filtered draws both pick it
    return row


@dataclass
class _Seq:
    tokens: list[int] = field(default_factory=list)
    prompt_len: int | None = None  # known once the prompt is complete
    sample: int = 0
    forks: int = 0  # samples forked from this prompt reader so far
    probe_of: tuple[int, int, int] | None = None  # (parent sample, parent tokens at fork, parent's first token)
    script: str = ""
    margin: float = 30.0


class FakeSession:
    def __init__(self, engine: "FakeEngine", n_seqs: int, n_cells: int) -> None:
        self.engine = engine
        self.n_seq_max = n_seqs
        self.n_cells = n_cells
        self.book = CellBook()
        self.seqs: dict[int, _Seq] = {}

    def _prompt_done(self, st: _Seq, sample: int) -> None:
        assert st.prompt_len is not None
        st.sample = sample
        st.script, st.margin = self.engine.script_for(st.tokens[: st.prompt_len], sample)

    def _next_for(self, st: _Seq) -> int:
        if st.prompt_len is None:
            return 0  # still reading the prompt: the row is not used
        if st.probe_of is not None:
            sample, at, start = st.probe_of
            answer = (self.engine.probe(sample, at) + "}").encode()
            k = len(st.tokens) - start - self.engine.cue_len  # answer tokens already fed after the cue
            return answer[k] if 0 <= k < len(answer) else EOS
        script = st.script.encode()
        k = len(st.tokens) - st.prompt_len
        return script[k] if k < len(script) else EOS

    def prefill(self, tokens: Sequence[int], seq_ids: Sequence[int]) -> np.ndarray:
        self.book.shared_prompt(len(tokens), seq_ids)
        for i, seq in enumerate(seq_ids):
            st = self.seqs[seq] = _Seq(list(tokens), len(tokens))
            self._prompt_done(st, i)
        first = self.seqs[seq_ids[0]]
        return _row(self._next_for(first), first.margin)

    def decode(self, feeds: Sequence[tuple[int, Sequence[int]]]) -> np.ndarray:
        rows = []
        for seq, toks in feeds:
            self.book.append(seq, len(toks))
            st = self.seqs.setdefault(seq, _Seq())
            st.tokens.extend(toks)
            if st.prompt_len is None and toks and toks[-1] == PROMPT_END:
                st.prompt_len = len(st.tokens)
                self._prompt_done(st, 0)
            rows.append(_row(self._next_for(st), st.margin))
        self.engine.decode_calls += 1
        return np.stack(rows)

    def remove(self, seq_id: int) -> None:
        self.book.remove(seq_id)
        self.seqs.pop(seq_id, None)
        self.engine.removed.append(seq_id)

    def fork(self, src: int, dst: int, n_tokens: int | None = None) -> None:
        self.book.fork(src, dst, n_tokens)
        parent = self.seqs[src]
        if n_tokens is not None or parent.prompt_len is None:  # a prefix: a new prompt reader
            self.seqs[dst] = _Seq(list(parent.tokens[:n_tokens]))
        elif len(parent.tokens) == parent.prompt_len and parent.probe_of is None:  # another sample
            parent.forks += 1
            st = self.seqs[dst] = _Seq(list(parent.tokens), parent.prompt_len)
            self._prompt_done(st, parent.sample + parent.forks)
        else:  # a probe of a running sample
            self.seqs[dst] = _Seq(list(parent.tokens), parent.prompt_len,
                                  probe_of=(parent.sample, len(parent.tokens) - parent.prompt_len,
                                            len(parent.tokens)))

    def retains(self, seq_id: int) -> bool:
        return False

    probes_in_place = False

    def truncate(self, seq_id: int, n_tokens: int) -> None:
        raise AssertionError("the fake engine probes on forks")

    def cells_used(self) -> int:
        return self.book.used

    def kv_bytes_used(self) -> int:
        return self.book.used

    def kv_bytes_peak(self) -> int:
        return self.book.peak

    def kv_bytes_allocated(self) -> int:
        return self.n_cells

    def set_abort_check(self, check: Callable[[], bool] | None) -> None:
        pass

    def close(self) -> None:
        pass


class FakeEngine:
    backend_name = "fake"
    backend_version = "0"
    n_threads = 1
    n_gpu_layers = 0
    max_sequences = 256
    memory_layout = MemoryLayout()
    kv_layouts = {"unified": memory_layout}
    baseline_anon_bytes = 0

    def __init__(self, scripts: Sequence[str] | Mapping[str, Sequence[str]],
                 probe: Callable[[int, int], str] | None = None, margins: Sequence[float] | None = None,
                 path: Path = Path("fake.gguf")) -> None:
        from edgescale.strategies.early_exit import ANSWER_CUE

        self.info = _info(path)
        self.sessions: list[int] = []  # n_seqs of every session opened
        self.scripts = scripts
        self.probe = probe or (lambda seq, n: "")
        self.cue_len = len(ANSWER_CUE.encode())
        # margin of the scripted token over the rest, per sample: sets each sequence's logprobs
        self.margins = list(margins) if margins is not None else None
        self.decode_calls = 0
        self.removed: list[int] = []

    def script_for(self, prompt: Sequence[int], sample: int) -> tuple[str, float]:
        """(script, margin) of sample ``sample`` of ``prompt`` (its tokens, PROMPT_END included)."""
        if isinstance(self.scripts, Mapping):
            text = bytes(t for t in prompt if t < 256).decode()
            scripts = self.scripts[text]
        else:
            scripts = self.scripts
        margin = self.margins[sample] if self.margins is not None else 30.0
        return (scripts[sample] if sample < len(scripts) else ""), margin

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        return list(text.encode())

    def token_bytes(self, token: int) -> bytes:
        return bytes([token]) if token < 256 else b""

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def format_prompt(self, prompt: str, *, chat: bool = True, system: str | None = None) -> list[int]:
        return [*self.tokenize(prompt), PROMPT_END]

    def format_messages(self, messages: Sequence[Mapping[str, str]], *, chat: bool = True) -> list[int]:
        return self.format_prompt("\n\n".join(m["content"] for m in messages))

    def kv_type_refusal(self, kv: KvType) -> str | None:
        return None

    def session(self, *, n_seqs: int, n_cells: int, max_batch: int, kv_layout: str | None = None,
                kv_type: KvType | None = None) -> FakeSession:
        self.sessions.append(n_seqs)
        return FakeSession(self, n_seqs, n_cells)

    def weights_bytes(self) -> int:
        return 0

    def close(self) -> None:
        pass


def fake_backend(scripts: Sequence[str], path: Path, **kw: object) -> Backend:
    """A registry entry loading a FakeEngine (CLI behaviour without a real model);
    ``path`` is a real file standing in for the model (the device profile keys on it)."""

    def load(request: LoadRequest) -> FakeEngine:
        return FakeEngine(scripts, path=path, **kw)  # type: ignore[arg-type]

    return Backend("fake", load, resolve=lambda model: path, summary="scripted engine for tests")
