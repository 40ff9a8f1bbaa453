"""The baseline row ``baseline@k``: k answers the way a llama-cpp-python user gets them today.

k sequential ``llama_cpp.Llama.create_completion`` calls on the same prompt
tokens (``engine.format_prompt``), with edgescale's sampling settings
(temperature, top-k, top-p, min-p), seeds ``seed + i``, the same
``max_tokens`` and stop strings, then a majority vote with the same answer
extraction and tie rule as ``maj@k``. ``Llama`` decodes one sequence at a
time (its ``n`` is ignored), so this is what batching has to beat.

``Llama`` reuses the longest cached prefix of the previous call, as it does
for any user: the first sample of a question reads the whole prompt, the
others only its last token. The cache is cleared before each question, so a
question's samples do not depend on which question ran before (that keeps
resumed runs identical to uninterrupted ones).

A deadline is honoured between calls only (``create_completion`` cannot be
interrupted): no new sample starts once it has passed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgescale import limits
from edgescale.answers.extract import extract
from edgescale.errors import BackendUnavailable, UsageError
from edgescale.runtime.memory import peak_rss_bytes
from edgescale.strategies.result import Result, Sample, Stats
from edgescale.strategies.voting import majority

_SPEC = re.compile(r"^\s*baseline(?:@(\d+))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class BaselineSpec:
    k: int = limits.DEFAULT_K

    def spec(self) -> str:
        return f"baseline@{self.k}"


def parse_baseline(text: str, default_k: int = limits.DEFAULT_K) -> BaselineSpec | None:
    """``baseline@K`` -> BaselineSpec; None when ``text`` is not a baseline spec."""
    m = _SPEC.match(text)
    if m is None:
        return None
    k = int(m.group(1)) if m.group(1) else default_k
    if not 1 <= k <= limits.MAX_SAMPLES:
        raise UsageError(f"bad strategy {text!r}: k must be between 1 and {limits.MAX_SAMPLES}")
    return BaselineSpec(k)


@dataclass(frozen=True)
class BaselineQuery:
    prompt_tokens: Sequence[int]
    k: int
    max_tokens: int
    seed: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    stop: tuple[str, ...]
    answer_kind: str
    choices: tuple[str, ...]
    deadline_s: float | None = None
    model_name: str = ""


class SequentialBaseline:
    """One ``llama_cpp.Llama`` loaded for the whole bench run."""

    def __init__(self, model_path: Path, *, n_ctx: int, n_threads: int, kv_bytes_per_cell: float) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - llama-cpp-python is a dependency
            raise BackendUnavailable(f"llama-cpp-python is not importable: {exc}") from exc
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self._kv_per_cell = kv_bytes_per_cell
        self.llm: Any = Llama(
            str(model_path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, verbose=False
        )

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> SequentialBaseline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prefill_s(self) -> float:
        import llama_cpp

        data = llama_cpp.llama_perf_context(self.llm.ctx)
        return float(data.t_p_eval_ms) / 1000.0

    def ask(self, query: BaselineQuery) -> Result:
        import llama_cpp

        prompt = list(query.prompt_tokens)
        if len(prompt) + query.max_tokens > self.n_ctx:
            raise UsageError(f"baseline context of {self.n_ctx} cells is too small for this prompt")
        self.llm.reset()  # no prefix from the previous question
        samples: list[Sample] = []
        prefill_s = 0.0
        ttft: float | None = None
        stop_reason = "all-finished"
        t0 = time.perf_counter()
        for i in range(query.k):
            if query.deadline_s is not None and time.perf_counter() - t0 >= query.deadline_s:
                stop_reason = "deadline"
                break
            llama_cpp.llama_perf_context_reset(self.llm.ctx)
            out = self.llm.create_completion(
                prompt, max_tokens=query.max_tokens, temperature=query.temperature, top_k=query.top_k,
                top_p=query.top_p, min_p=query.min_p, seed=query.seed + i, stop=list(query.stop) or None,
            )
            now = time.perf_counter() - t0
            prefill_s += self._prefill_s()
            if ttft is None:
                ttft = self._prefill_s()
            choice = out["choices"][0]
            text = str(choice["text"])
            got = extract(text, query.answer_kind, choices=query.choices or None)  # type: ignore[arg-type]
            samples.append(
                Sample(
                    index=i, seed=query.seed + i, text=text, n_tokens=int(out["usage"]["completion_tokens"]),
                    finish_reason=str(choice.get("finish_reason") or "stop"),
                    answer=got.value if got is not None else None, answer_source="text" if got else None,
                    mean_logprob=None, answer_logprob=None, finished_at_s=now,
                )
            )
        wall = time.perf_counter() - t0
        # Tie rule of maj@k: the answer whose first sample would finish first in a batch (fewest tokens).
        by_index = {s.index: s for s in samples}
        vote = majority([(s.index, s.answer) for s in samples], lambda i: (by_index[i].n_tokens, i))
        longest = max((s.n_tokens for s in samples), default=0)
        generated = sum(s.n_tokens for s in samples)
        stats = Stats(
            prompt_tokens=len(prompt), generated_tokens=generated, probe_tokens=0, decode_steps=generated,
            wall_s=wall, prefill_s=prefill_s, ttft_s=ttft,
            peak_kv_bytes=int((len(prompt) + longest) * self._kv_per_cell),
            kv_bytes_allocated=int(self.n_ctx * self._kv_per_cell), peak_rss_bytes=peak_rss_bytes(),
            threads=self.n_threads, backend="llama-cpp-python (sequential)", samples_started=len(samples),
        )
        return Result(
            answer=vote.answer, text=by_index[vote.winner].text if vote.winner is not None else "",
            winner=vote.winner, strategy=BaselineSpec(query.k).spec(), stop_reason=stop_reason, votes=vote.votes,
            samples=tuple(samples), probes=(), stats=stats, model=query.model_name, answer_kind=query.answer_kind,
        )
