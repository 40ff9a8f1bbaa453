"""What a query returns: the answer, every sample, the votes and the stats."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from edgescale.runtime.token_logprobs import TokenLogprob
from edgescale.strategies.records import Outcome, ProbeRecord

if TYPE_CHECKING:
    from edgescale.strategies.planner import Plan

__all__ = ["Outcome", "ProbeRecord", "Result", "Sample", "Stats"]


@dataclass(frozen=True)
class Sample:
    index: int
    seed: int
    text: str
    n_tokens: int
    finish_reason: str  # stop | length | cancelled | deadline | early-exit
    answer: str | None
    answer_source: str | None  # "text" (extracted from the sample) or "probe"
    mean_logprob: float | None  # over all generated tokens
    answer_logprob: float | None  # mean over the tokens of the answer span (self-certainty)
    finished_at_s: float | None
    confidence: float | None = None  # DeepConf's trace score (lowest window confidence), when computed
    valid: bool | None = None  # under a constraint: the text is a complete match (None: unconstrained)
    # each token and its log-probability (and the top alternatives), when the query asked (logprobs)
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class Stats:
    prompt_tokens: int
    generated_tokens: int  # sample tokens
    probe_tokens: int  # tokens decoded for probes (cue + answer)
    decode_steps: int
    wall_s: float
    prefill_s: float
    ttft_s: float | None
    peak_kv_bytes: int
    kv_bytes_allocated: int
    peak_rss_bytes: int
    threads: int
    backend: str
    samples_started: int = 0
    cancelled_tokens: int = 0  # tokens of samples the strategy cut short (already spent, in generated_tokens)
    cached_prompt_tokens: int = 0  # of prompt_tokens, served from the prefix cache instead of read
    queue_s: float = 0.0  # of wall_s, waiting for room in a shared decode loop
    mask_s: float = 0.0  # computing and applying output-constraint masks

    @property
    def total_tokens(self) -> int:
        return self.generated_tokens + self.probe_tokens


@dataclass(frozen=True)
class Result:
    answer: str | None
    text: str  # the winning sample's text ("" when there is none)
    winner: int | None
    strategy: str
    stop_reason: str  # which rule ended the query
    votes: dict[str, int]
    samples: tuple[Sample, ...]
    probes: tuple[ProbeRecord, ...]
    stats: Stats
    model: str
    answer_kind: str
    plan: Plan | None = field(default=None)
    outcome: Outcome | None = None
    # samples that finished without an extractable answer and so did not count as finishers
    # (ffs / short-m@k with rule=answered)
    skipped: tuple[int, ...] = ()
    # under an output constraint (structured output): the answer is complete and valid
    # (JSON: an instance of its schema); None: no constraint
    valid: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stats"]["total_tokens"] = self.stats.total_tokens
        plan = self.plan.to_dict() if self.plan is not None else None
        if plan is not None and self.outcome is not None:
            plan.update(outcome=self.outcome.name, stage1_certainty=self.outcome.stage1_certainty)
        d["plan"] = plan
        d.pop("outcome")
        return d
