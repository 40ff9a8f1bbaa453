"""Confidence-weighted voting: DeepConf (Fu et al. 2025, "Deep Think with Confidence").

- Token confidence: minus the mean model log-probability of the top ``topk``
  candidates at a step (:func:`edgescale.runtime.sampling.token_confidence`); high
  when one candidate takes nearly all the mass.
- Group confidence: the mean token confidence over a sliding window of ``window``
  tokens. A trace's score is its *lowest* group confidence (the paper's "lowest group
  confidence": one confused stretch marks the trace); a trace shorter than the window
  scores the mean over all its tokens.
- Offline (``conf@k``): all k samples run to their end; the traces with an answer are
  ranked by score, the least confident dropped (``keep``: the share kept, at least
  one; DeepConf-high keeps 90%, DeepConf-low 10%), and the rest vote with their score
  as the weight.
- Online (``conf@k:online=1``): ``warmup`` samples run to their end first; the
  stopping threshold is the ``1 - keep`` quantile of their scores. Then the other
  samples start, and one whose latest window falls below the threshold is stopped at
  once (``low-confidence``: it does not vote). After every finished sample the
  weighted share of the leading answer is checked: at ``consensus`` or more the query
  stops (``consensus``). With ``give_up`` (online; 0, off, by default): when the warm-up
  ends, if its distinct answers are at least ``give_up`` of its answered samples (at least
  two answered), the query stops there (``gave-up``) with the warm-up's weighted vote: where
  the answers spread, more samples would not make a consensus. `auto`'s default escalation
  gives up at 1 (its warm-up answers all differ).
- ``prior`` (set by `auto`, not a spec field): samples that finished before this controller
  started (stage 1's greedy sample). They vote with their score, in the consensus check
  and in the final vote, as adaptive's prior does; the warm-up's threshold and give-up
  read the controller's own samples only.

Ties of weight go to the answer whose first sample finished first, as everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from edgescale.runtime.generate import BatchGenerator, SeqState, TokenEvent
from edgescale.strategies.base import AnswerBook, Decision, Unstaged, cancel_live, finish_order, finished_naturally
from edgescale.strategies.spec import Confidence


def group_confidences(confidences: Sequence[float], window: int) -> list[float]:
    """Mean token confidence of every window of ``window`` consecutive tokens (one group,
    the whole trace, when it is shorter)."""
    if not confidences:
        return []
    if len(confidences) <= window:
        return [float(np.mean(confidences))]
    c = np.cumsum(np.asarray(confidences, dtype=np.float64))
    sums = c[window - 1:] - np.concatenate(([0.0], c[:-window]))
    return (sums / window).tolist()


def trace_score(st: SeqState, window: int) -> float | None:
    """A sample's lowest group confidence (None without tokens)."""
    groups = group_confidences(st.confidences, window)
    return min(groups) if groups else None


def tail_confidence(st: SeqState, window: int) -> float | None:
    """The group confidence of a sample's latest ``window`` tokens (None before it has them)."""
    if len(st.confidences) < window:
        return None
    return float(np.mean(st.confidences[-window:]))


@dataclass(frozen=True)
class WeightedVote:
    answer: str | None
    winner: int | None
    votes: dict[str, int]  # how many kept traces said each answer
    weights: dict[str, float]  # their summed scores
    dropped: tuple[int, ...]  # answered traces filtered out as the least confident


def weighted_vote(gen: BatchGenerator, book: AnswerBook, indices: Sequence[int], *, keep: float,
                  window: int) -> WeightedVote:
    """DeepConf's offline vote over the finished samples ``indices``."""
    scored = []
    for i in indices:
        st = gen.states[i]
        value, score = book.value(st), trace_score(st, window)
        if value is not None and score is not None:
            scored.append((score, i, value))
    if not scored:
        return WeightedVote(None, None, {}, {}, ())
    scored.sort(key=lambda t: (-t[0], finish_order(gen.states[t[1]])))
    n_keep = max(1, math.ceil(keep * len(scored) - 1e-9))
    kept, dropped = scored[:n_keep], scored[n_keep:]
    weights: dict[str, float] = {}
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for score, i, value in kept:
        weights[value] = weights.get(value, 0.0) + score
        counts[value] = counts.get(value, 0) + 1
        if value not in first or finish_order(gen.states[i]) < finish_order(gen.states[first[value]]):
            first[value] = i
    best = max(weights.values())
    tied = [a for a in weights if math.isclose(weights[a], best, rel_tol=1e-12)]
    answer = min(tied, key=lambda a: finish_order(gen.states[first[a]]))
    votes = dict(sorted(counts.items(), key=lambda kv: -weights[kv[0]]))
    return WeightedVote(answer, first[answer], votes, weights, tuple(i for _, i, _ in dropped))


def consensus_share(weights: dict[str, float]) -> float:
    total = sum(weights.values())
    return max(weights.values()) / total if total > 0 else 0.0


@dataclass
class ConfidenceController(Unstaged):
    """``conf@k``: offline (every sample to its end, then the weighted vote) or online."""

    spec: Confidence
    prior: tuple[int, ...] = ()  # finished samples from before (auto's stage 1) that vote too
    probe_slots: int = 0
    probe_cells: int = 0
    order: list[int] = field(default_factory=list)  # finished samples, in finish order
    threshold: float | None = None  # online: set when the warm-up has finished

    @property
    def n_seqs(self) -> int:
        return self.spec.k

    @property
    def n_initial(self) -> int:
        return min(self.spec.warmup, self.spec.k) if self.spec.online else self.spec.k

    def on_step(self, gen: BatchGenerator, events: Sequence[TokenEvent], book: AnswerBook) -> str | None:
        self.order.extend(finished_naturally(gen, events))
        if not self.spec.online:
            return "all-finished" if not gen.live else None
        if self.threshold is None:
            if gen.live:
                return None  # the warm-up runs to its end
            scores = [s for s in (trace_score(gen.states[i], self.spec.window) for i in self.order) if s is not None]
            self.threshold = float(np.quantile(scores, 1 - self.spec.keep)) if scores else -math.inf
            if self._agreed(gen, book):
                return "consensus"
            if self._spread(gen, book):
                return "gave-up"
            gen.activate(gen.pending())
        else:
            for i in list(gen.live):
                tail = tail_confidence(gen.states[i], self.spec.window)
                if tail is not None and tail < self.threshold:
                    gen.cancel(i, "low-confidence")
            if any(e.finish_reason in ("stop", "length") for e in events) and self._agreed(gen, book):
                cancel_live(gen)
                return "consensus"
        return "all-finished" if not gen.live else None

    def _spread(self, gen: BatchGenerator, book: AnswerBook) -> bool:
        answers = [a for a in (book.value(gen.states[i]) for i in self.order) if a is not None]
        return self.spec.give_up > 0 and len(answers) >= 2 and len(set(answers)) >= self.spec.give_up * len(answers)

    def _agreed(self, gen: BatchGenerator, book: AnswerBook) -> bool:
        out = weighted_vote(gen, book, [*self.prior, *self.order], keep=1.0, window=self.spec.window)
        return bool(out.weights) and consensus_share(out.weights) >= self.spec.consensus

    def decide(self, gen: BatchGenerator, book: AnswerBook) -> Decision:
        # online: the stopped traces never finished, so the survivors are already filtered
        keep = 1.0 if self.spec.online else self.spec.keep
        voters = [*self.prior, *self.order]
        out = weighted_vote(gen, book, voters, keep=keep, window=self.spec.window)
        winner = out.winner if out.winner is not None else (voters[0] if voters else None)
        return Decision(out.answer, winner, out.votes)
