"""What a conversion or a quantisation type costs: perplexity and greedy agreement.

Works on any Engine (a GGUF on llama.cpp, a converted dir on ONNX Runtime), so
one report compares a candidate with its source:

* **perplexity** on a fixed text shipped with the package (``eval_text``): the
  text is cut into ``rows`` equal chunks scored side by side, one batched
  decode step per position (each chunk is its own context, like llama.cpp's
  perplexity tool with a context of one chunk);
* **greedy agreement** with a reference engine on fixed prompts: how many of
  the first ``n_tokens`` greedy tokens match (whole continuations identical,
  and the matching prefix of each), the top-1 agreement when the candidate is
  fed the reference's tokens (teacher forcing: one early near-tie does not
  hide the rest), and the first position's logit difference (max abs, and
  with the constant offset removed, which softmax ignores);
* **kernel noise floor** when the reference is a GGUF: the same agreement
  between llama.cpp with flash attention off and on, on the reference's own
  weights. Two correct kernels that sum in a different order already diverge
  on near-ties (SmolLM2-135M: 6 of 10 rote prompts identical over 32 tokens),
  so a candidate that agrees with the reference as well as that is as close as
  rounding lets any two runtimes be.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgescale.errors import UsageError
from edgescale.evals.eval_text import EVAL_TEXT
from edgescale.runtime.engine import Engine
from edgescale.runtime.sampling import GREEDY, log_softmax_at

EVAL_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "List three primary colors.",
    "What is 12 plus 7?",
    "Translate 'good morning' into Spanish.",
    "Who wrote Romeo and Juliet?",
    "Give me a tip for staying focused.",
    "What does a thermometer measure?",
    "Describe a cat in two sentences.",
)


@dataclass(frozen=True)
class Perplexity:
    tokens: int  # tokens scored
    nll: float  # mean negative log-likelihood per token (nats)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)


@dataclass(frozen=True)
class GreedyAgreement:
    prompts: int
    n_tokens: int
    identical: int  # prompts whose greedy continuations match token for token
    matched_prefix: tuple[int, ...]  # per prompt: tokens equal before the first difference
    teacher_forced_top1: (
        float  # fraction of reference positions where the candidate's argmax agrees
    )
    max_abs_logit_diff: float  # first generated position, over all prompts
    max_centered_logit_diff: float  # same, after removing each prompt's median offset

    def summary(self) -> str:
        return (
            f"{self.identical}/{self.prompts} prompts identical over {self.n_tokens} tokens, "
            f"matched prefixes {list(self.matched_prefix)}, teacher-forced top-1 "
            f"{self.teacher_forced_top1:.3f}, first-token logits max abs diff "
            f"{self.max_abs_logit_diff:.3f} ({self.max_centered_logit_diff:.3f} without the constant offset)"
        )


@dataclass(frozen=True)
class QualityReport:
    candidate: str
    candidate_backend: str
    reference: str | None
    reference_backend: str | None
    candidate_ppl: Perplexity
    reference_ppl: Perplexity | None
    agreement: GreedyAgreement | None
    seconds: float
    floor: GreedyAgreement | None = None  # llama.cpp flash attention off vs on, same weights

    def summary(self) -> str:
        head = (
            f"{self.candidate} [{self.candidate_backend}]: perplexity {self.candidate_ppl.ppl:.3f} "
            f"over {self.candidate_ppl.tokens} tokens"
        )
        lines = [head]
        if self.reference_ppl is not None:
            ratio = self.candidate_ppl.ppl / self.reference_ppl.ppl
            lines.append(
                f"{self.reference} [{self.reference_backend}]: perplexity {self.reference_ppl.ppl:.3f} "
                f"(candidate/reference {ratio:.4f})"
            )
        if self.agreement is not None:
            lines.append(f"greedy agreement: {self.agreement.summary()}")
        if self.floor is not None:
            lines.append(
                "noise floor (llama.cpp against itself, flash attention off vs on): "
                + self.floor.summary()
            )
        return "\n".join(lines)


def perplexity(
    engine: Engine, text: str = EVAL_TEXT, *, rows: int = 8, max_tokens: int | None = None
) -> Perplexity:
    """Mean NLL of ``text`` under ``engine``, ``rows`` chunks scored in one batch per position."""
    if rows < 1:
        raise UsageError("rows must be at least 1")
    tokens = engine.tokenize(text, add_special=False, parse_special=False)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    chunk = len(tokens) // rows
    if chunk < 2:
        raise UsageError(f"the text gives {len(tokens)} tokens: too few for {rows} rows")
    bos = engine.info.bos_token_id if engine.info.add_bos else None
    chunks = [
        ([bos] if bos is not None else []) + tokens[r * chunk : (r + 1) * chunk]
        for r in range(rows)
    ]
    length = len(chunks[0])
    session = engine.session(n_seqs=rows, n_cells=rows * length + 8, max_batch=rows)
    total, count = 0.0, 0
    try:
        for j in range(length - 1):  # position j predicts text token j + 1 (a BOS is context only)
            logits = session.decode([(r, [chunks[r][j]]) for r in range(rows)])
            targets = np.array([chunks[r][j + 1] for r in range(rows)], dtype=np.int64)
            total -= float(log_softmax_at(np.asarray(logits), targets).sum())
            count += rows
    finally:
        session.close()
    return Perplexity(tokens=count, nll=total / count)


def _greedy(engine: Engine, prompt: list[int], n_tokens: int) -> list[int]:
    from edgescale.runtime.generate import BatchGenerator, GenerationConfig

    cfg = GenerationConfig(max_new_tokens=n_tokens, sampling=GREEDY)
    with BatchGenerator(engine, prompt, cfg, n_seqs=1) as gen:
        while gen.live:
            gen.step()
        return list(gen.states[0].tokens)


def _teacher_forced(
    engine: Engine, prompt: list[int], reference: list[int]
) -> tuple[int, int, np.ndarray]:
    """(positions where argmax == the reference's next token, positions compared, the
    logits of the first generated position)."""
    session = engine.session(
        n_seqs=1, n_cells=len(prompt) + len(reference) + 8, max_batch=max(len(prompt), 1)
    )
    try:
        row = session.prefill(prompt, [0])
        first = np.array(row, dtype=np.float64)
        agree = int(bool(reference) and int(np.argmax(row)) == reference[0])
        for j in range(len(reference) - 1):
            row = session.decode([(0, [reference[j]])])[0]
            agree += int(int(np.argmax(row)) == reference[j + 1])
        return agree, len(reference), first
    finally:
        session.close()


def greedy_agreement(
    candidate: Engine,
    reference: Engine,
    prompts: Sequence[str] = EVAL_PROMPTS,
    *,
    n_tokens: int = 32,
) -> GreedyAgreement:
    identical = 0
    prefixes: list[int] = []
    agree = compared = 0
    max_diff = max_centered = 0.0
    for text in prompts:
        prompt = reference.format_prompt(text)
        ref_toks = _greedy(reference, prompt, n_tokens)
        cand_toks = _greedy(candidate, prompt, n_tokens)
        n = next(
            (i for i, (a, b) in enumerate(zip(ref_toks, cand_toks)) if a != b),
            min(len(ref_toks), len(cand_toks)),
        )
        prefixes.append(n)
        identical += int(ref_toks == cand_toks)
        a, c, cand_row = _teacher_forced(candidate, prompt, ref_toks)
        _, _, ref_row = _teacher_forced(reference, prompt, [])
        agree += a
        compared += c
        diff = cand_row - ref_row
        max_diff = max(max_diff, float(np.abs(diff).max()))
        max_centered = max(max_centered, float(np.abs(diff - np.median(diff)).max()))
    return GreedyAgreement(
        prompts=len(prompts),
        n_tokens=n_tokens,
        identical=identical,
        matched_prefix=tuple(prefixes),
        teacher_forced_top1=agree / compared if compared else 1.0,
        max_abs_logit_diff=max_diff,
        max_centered_logit_diff=max_centered,
    )


def kernel_noise_floor(
    gguf: str | Path,
    prompts: Sequence[str] = EVAL_PROMPTS,
    *,
    n_threads: int,
    n_tokens: int = 32,
) -> GreedyAgreement:
    """Greedy agreement of llama.cpp with itself: flash attention off against on.

    Same weights, same machine; only the attention kernel (its summation order,
    and fp16 rounding of the softmax in the unfused path) differs. No candidate
    can be expected to agree with llama.cpp more closely than this.
    """
    from edgescale.devices.buildcheck import ensure_runs
    from edgescale.runtime.llama_engine import LlamaCppEngine

    ensure_runs(Path(gguf))
    with (
        LlamaCppEngine.load(gguf, n_threads=n_threads, flash_attn=True) as fused,
        LlamaCppEngine.load(gguf, n_threads=n_threads, flash_attn=False) as unfused,
    ):
        return greedy_agreement(unfused, fused, prompts, n_tokens=n_tokens)


def _load(path: str | Path, *, n_threads: int) -> Engine:
    """A ``.gguf`` file on llama.cpp, a converted directory on ONNX Runtime (the registry decides)."""
    from edgescale.loader import LoadSpec, default_backends, load_engine

    registry = default_backends()
    backend = registry.for_model(path).name
    engine, _ = load_engine(LoadSpec(str(path), backend=backend, threads=n_threads, gpu_layers=0),
                            registry=registry)
    return engine


def quality_report(
    candidate: str | Path,
    reference: str | Path | None = None,
    *,
    n_threads: int,
    max_tokens: int | None = None,
    prompts: Sequence[str] = EVAL_PROMPTS,
    n_tokens: int = 32,
    noise_floor: bool = True,
) -> QualityReport:
    """Perplexity of ``candidate`` (and of ``reference``), their greedy agreement and,
    for a GGUF reference, llama.cpp's own kernel noise floor (``noise_floor``)."""
    t0 = time.perf_counter()
    cand = _load(candidate, n_threads=n_threads)
    ref = _load(reference, n_threads=n_threads) if reference is not None else None
    try:
        cand_ppl = perplexity(cand, max_tokens=max_tokens)
        ref_ppl = perplexity(ref, max_tokens=max_tokens) if ref is not None else None
        agreement = (
            greedy_agreement(cand, ref, prompts, n_tokens=n_tokens)
            if ref is not None and prompts
            else None
        )
    finally:
        cand.close()
        if ref is not None:
            ref.close()
    floor = None
    if noise_floor and agreement is not None and reference is not None and not Path(reference).is_dir():
        floor = kernel_noise_floor(reference, prompts, n_threads=n_threads, n_tokens=n_tokens)
    return QualityReport(
        candidate=str(candidate),
        candidate_backend=cand.backend_name,
        reference=str(reference) if reference is not None else None,
        reference_backend=ref.backend_name if ref is not None else None,
        candidate_ppl=cand_ppl,
        reference_ppl=ref_ppl,
        agreement=agreement,
        seconds=time.perf_counter() - t0,
        floor=floor,
    )


@dataclass(frozen=True)
class KvTypeCost:
    """What keeping the KV cache in ``kv_type`` costs against f16, teacher-forced over the
    fixed evaluation text: both caches read the same tokens, position by position."""

    kv_type: str
    tokens: int  # positions compared
    top1: float  # fraction of positions whose argmax is f16's
    max_abs_logit_diff: float  # over all positions
    nll: float  # mean NLL of the text with this cache (nats per token)
    nll_f16: float  # ... and with f16

    @property
    def ppl_ratio(self) -> float:
        return math.exp(self.nll - self.nll_f16)

    def to_dict(self) -> dict[str, float | int | str]:
        return {"kv_type": self.kv_type, "tokens": self.tokens, "top1": self.top1,
                "max_abs_logit_diff": self.max_abs_logit_diff, "nll": self.nll, "nll_f16": self.nll_f16}


def kv_type_cost(engine: Engine, kv_type: str, text: str = EVAL_TEXT, *, rows: int = 8,
                 max_tokens: int | None = 2048) -> KvTypeCost:
    """Teacher-forced top-1 agreement and max |logit difference| of a ``kv_type`` cache
    against an f16 one on the same engine: ``rows`` chunks of ``text`` (its first
    ``max_tokens`` tokens) decoded side by side, one position a step, in two sessions."""
    from edgescale.runtime.kv_types import F16, parse_kv_type

    kv = parse_kv_type(kv_type)
    tokens = engine.tokenize(text, add_special=False, parse_special=False)[:max_tokens]
    chunk = len(tokens) // rows
    if chunk < 2:
        raise UsageError(f"the text gives {len(tokens)} tokens: too few for {rows} rows")
    bos = engine.info.bos_token_id if engine.info.add_bos else None
    chunks = [([bos] if bos is not None else []) + tokens[r * chunk : (r + 1) * chunk] for r in range(rows)]
    length = len(chunks[0])
    sessions = [engine.session(n_seqs=rows, n_cells=rows * length + 8, max_batch=rows, kv_type=t) for t in (F16, kv)]
    agree = count = 0
    max_diff = nll_ref = nll = 0.0
    try:
        for j in range(length - 1):
            feeds = [(r, [chunks[r][j]]) for r in range(rows)]
            ref = np.array(sessions[0].decode(feeds), dtype=np.float32)
            cand = np.array(sessions[1].decode(feeds), dtype=np.float32)
            targets = np.array([chunks[r][j + 1] for r in range(rows)], dtype=np.int64)
            agree += int((ref.argmax(axis=1) == cand.argmax(axis=1)).sum())
            max_diff = max(max_diff, float(np.abs(cand - ref).max()))
            nll_ref -= float(log_softmax_at(ref, targets).sum())
            nll -= float(log_softmax_at(cand, targets).sum())
            count += rows
    finally:
        for s in sessions:
            s.close()
    return KvTypeCost(kv_type=kv.name, tokens=count, top1=agree / count, max_abs_logit_diff=max_diff,
                      nll=nll / count, nll_f16=nll_ref / count)
