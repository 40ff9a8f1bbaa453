"""A sample and its settings: what the step loop (``runtime.generate``) keeps per sequence,
hands out per step, and reports per query."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edgescale.runtime.constraints import AnswerTail, Constraint
from edgescale.runtime.detok import IncrementalText
from edgescale.runtime.sampling import SamplingConfig

FinishReason = Literal["stop", "length", "cancelled", "deadline", "early-exit", "low-confidence"]


MIN_BATCH = 32
MAX_BATCH = 512


def batch_size(prompt_tokens: int, n_seqs: int) -> int:
    """Tokens per llama_decode call: the whole prompt at once when it is short, every
    sequence's token in one step. Longer prompts and probe cues are split into
    pieces of this size; a larger batch costs compute-buffer memory."""
    return max(MIN_BATCH, min(MAX_BATCH, max(prompt_tokens, n_seqs)))


@dataclass(frozen=True)
class GenerationConfig:
    """Per-query generation settings shared by all samples."""

    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    sampling: SamplingConfig = SamplingConfig()
    seed: int = 0
    # (sample index, sampling) pairs that replace ``sampling`` for those samples
    # (auto: its first sample is greedy, the samples of its escalation are not)
    sampling_overrides: tuple[tuple[int, SamplingConfig], ...] = ()
    # end-of-generation tokens do not end a sample (calibration and benches need
    # exactly max_new_tokens per sample); they are kept as ordinary tokens
    ignore_eos: bool = False
    # DeepConf's token confidence (strategies.confidence): minus the mean model log-probability
    # of the top ``confidence_top_k`` candidates at each step, kept per sample (0: not computed)
    confidence_top_k: int = 0
    # every token of every sample matches this (runtime.constraints); None: free text
    constraint: Constraint | None = None
    # free reasoning, then a constrained answer (runtime.constraints.AnswerTail); None: none
    tail: AnswerTail | None = None
    # the most likely tokens of each step and their model log-probabilities, kept per sample (0: none)
    top_logprobs: int = 0
    logprobs: bool = False  # the result carries each sample's tokens and their log-probabilities

    def sampling_of(self, index: int) -> SamplingConfig:
        return next((cfg for i, cfg in self.sampling_overrides if i == index), self.sampling)


@dataclass
class SeqState:
    """One sample as it grows."""

    index: int
    seed: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)  # per token, when the config asks for them
    # per token, when the config asks for them: the step's top (token, model log-probability) pairs
    top_logprobs: list[tuple[tuple[int, float], ...]] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # text length after each token
    finish_reason: FinishReason | None = None
    # under a constraint: whether the text is a complete match (None: unconstrained)
    valid: bool | None = None
    tail_at: int | None = None  # len(tokens) when its answer tail began (None: not begun)
    finished_step: int | None = None
    started_at: float | None = None  # seconds since the generator started
    finished_at: float | None = None
    _text: IncrementalText = field(default_factory=IncrementalText, repr=False)
    _visible: str = ""  # text after stop-string truncation
    _emitted: int = 0  # characters already handed out as deltas

    @property
    def text(self) -> str:
        return self._visible

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class TokenEvent:
    index: int
    token: int
    logprob: float
    delta: str  # text that became safe to show (stop strings held back)
    finish_reason: FinishReason | None


@dataclass(frozen=True)
class ProbeResult:
    index: int
    text: str
    n_tokens: int  # tokens decoded for this probe (cue + answer)
    tail: bool = False  # the answer tail's lead-in and a constrained answer (else: after the answer cue)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, served from the prefix cache
    prefill_s: float = 0.0
    first_token_s: float | None = None
    decode_steps: int = 0
    probe_tokens: int = 0
    probes: int = 0
    tail_tokens: int = 0  # answer lead-in tokens fed to samples (their answers are sample tokens)
    mask_s: float = 0.0  # computing and applying constraint masks
