"""A scripted fake engine, only for pinning down strategy rules exactly.

Token ids are bytes (0-255) and 256 is end-of-generation. Sequence ``i``
greedily "generates" ``scripts[i]`` and then EOS; every row of logits puts its
maximum on the scripted next byte, so the real BatchGenerator, samplers and
controllers run unchanged on top. A probe (fork + cue) of sequence ``i`` after
``n`` tokens answers ``probe(i, n)`` followed by "}". Backend claims are never
tested on this: it stands in for a model only in strategy-logic tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgescale.models.info import ModelInfo
from edgescale.runtime.backends import Backend, LoadRequest
from edgescale.runtime.engine import CellBook, MemoryLayout

EOS = 256
VOCAB = 257


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


class FakeSession:
    def __init__(self, engine: "FakeEngine", n_seqs: int, n_cells: int) -> None:
        self.engine = engine
        self.n_seq_max = n_seqs
        self.n_cells = n_cells
        self.book = CellBook()
        self.prompt_len = 0
        self.forks: dict[int, tuple[int, int, int]] = {}  # dst -> (src, src tokens at fork, tokens fed)

    def _next_for(self, seq: int) -> int:
        if seq in self.forks:
            src, at, fed = self.forks[seq]
            answer = self.engine.probe(src, at) + "}"
            k = fed - self.engine.cue_len  # answer tokens already fed after the cue
            return answer.encode()[k] if 0 <= k < len(answer.encode()) else EOS
        script = self.engine.scripts[seq].encode()
        k = self.book.position(seq) - self.prompt_len
        return script[k] if k < len(script) else EOS

    def prefill(self, tokens: Sequence[int], seq_ids: Sequence[int]) -> np.ndarray:
        self.prompt_len = len(tokens)
        self.book.shared_prompt(len(tokens), seq_ids)
        return _row(self._next_for(seq_ids[0]), 30.0)

    def decode(self, feeds: Sequence[tuple[int, Sequence[int]]]) -> np.ndarray:
        rows = []
        for seq, toks in feeds:
            self.book.append(seq, len(toks))
            if seq in self.forks:
                src, at, fed = self.forks[seq]
                self.forks[seq] = (src, at, fed + len(toks))
            src = self.forks[seq][0] if seq in self.forks else seq
            rows.append(_row(self._next_for(seq), self.engine.margins[src]))
        self.engine.decode_calls += 1
        return np.stack(rows)

    def remove(self, seq_id: int) -> None:
        self.book.remove(seq_id)
        self.forks.pop(seq_id, None)
        self.engine.removed.append(seq_id)

    def fork(self, src: int, dst: int) -> None:
        self.book.fork(src, dst)
        self.forks[dst] = (src, self.book.position(src) - self.prompt_len, 0)

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
    memory_layout = MemoryLayout()
    baseline_anon_bytes = 0

    def __init__(self, scripts: Sequence[str], probe: Callable[[int, int], str] | None = None,
                 margins: Sequence[float] | None = None, path: Path = Path("fake.gguf")) -> None:
        from edgescale.strategies.early_exit import ANSWER_CUE

        self.info = _info(path)
        self.sessions: list[int] = []  # n_seqs of every session opened
        self.scripts = list(scripts)
        self.probe = probe or (lambda seq, n: "")
        self.cue_len = len(ANSWER_CUE.encode())
        # margin of the scripted token over the rest: sets each sequence's logprobs
        self.margins = list(margins) if margins is not None else [30.0] * len(self.scripts)
        self.decode_calls = 0
        self.removed: list[int] = []

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        return list(text.encode())

    def token_bytes(self, token: int) -> bytes:
        return bytes([token]) if token < 256 else b""

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def format_prompt(self, prompt: str, *, chat: bool = True, system: str | None = None) -> list[int]:
        return self.tokenize(prompt)

    def session(self, *, n_seqs: int, n_cells: int, max_batch: int) -> FakeSession:
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
