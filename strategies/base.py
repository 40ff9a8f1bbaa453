"""What every strategy controller shares.

A controller sits on the batched step loop (runtime.generate.BatchGenerator):
after each step it sees the token events, may cancel sequences, start more or
probe them, and returns the name of the rule that ends the query (or None to
go on). ``decide`` then turns the samples into an answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from edgescale.answers.extract import Extracted, extract, extract_probe, is_hedge
from edgescale.runtime.generate import BatchGenerator, ProbeResult, SeqState, TokenEvent
from edgescale.strategies.records import Outcome, ProbeRecord
from edgescale.strategies.voting import VoteOutcome, majority

# Finish reasons that mean the sample ran to its own end.
NATURAL = ("stop", "length")


@dataclass
class AnswerBook:
    """Extracted answers of samples, computed once per finished sample."""

    kind: str
    choices: tuple[str, ...] = ()
    # answer tails (--answer number:tail): a sample's answer is its tail's; one cut before
    # its tail began (a deadline, a cancel) has none
    tail: bool = False
    _cache: dict[int, Extracted | None] = field(default_factory=dict)
    _from_probe: dict[int, str] = field(default_factory=dict)

    def of(self, st: SeqState) -> Extracted | None:
        if st.index not in self._cache:
            # a sample that broke off inside its constraint has no answer (its text is not valid)
            # with answer tails, only a finished tail answers (not half a reasoning, nor a tail
            # cut at a deadline after its first digit)
            none = st.valid is False or (self.tail and (st.tail_at is None or
                                                         st.finish_reason not in ("stop", "length")))
            self._cache[st.index] = (None if none else
                                     extract(st.text, self.kind, choices=self.choices or None))  # type: ignore[arg-type]
        return self._cache[st.index]

    def probe_answer(self, res: ProbeResult) -> tuple[Extracted | None, bool]:
        """A probe's answer and whether its text hedges. A probe after the answer cue reads
        up to the brace that closes ``\\boxed{``; a tail probe decoded a constrained answer
        after its lead-in (it cannot hedge)."""
        if res.tail:
            return extract(res.text, self.kind, choices=self.choices or None), False  # type: ignore[arg-type]
        return extract_probe(res.text, self.kind), is_hedge(res.text)  # type: ignore[arg-type]

    def value(self, st: SeqState) -> str | None:
        if st.index in self._from_probe:
            return self._from_probe[st.index]
        got = self.of(st)
        return got.value if got is not None else None

    def set_probe_answer(self, index: int, value: str) -> None:
        self._from_probe[index] = value

    def source(self, st: SeqState) -> str | None:
        if st.index in self._from_probe:
            return "probe"
        return "text" if self.of(st) is not None else None


def finish_order(st: SeqState) -> tuple[int, int, int]:
    """Who finished first: earlier step, then fewer tokens, then lower index."""
    step = st.finished_step if st.finished_step is not None else 1 << 30
    return (step, len(st.tokens), st.index)


def vote(gen: BatchGenerator, book: AnswerBook, indices: Sequence[int]) -> VoteOutcome:
    states = gen.states
    return majority([(i, book.value(states[i])) for i in indices], lambda i: finish_order(states[i]))


def finished_naturally(gen: BatchGenerator, events: Sequence[TokenEvent]) -> list[int]:
    """Indices that finished on their own in this step, in finish order."""
    done = [e.index for e in events if e.finish_reason in NATURAL]
    return sorted(done, key=lambda i: finish_order(gen.states[i]))


def cancel_live(gen: BatchGenerator, reason: str = "cancelled") -> None:
    for i in list(gen.live):
        gen.cancel(i, reason)  # type: ignore[arg-type]


def span_logprob(st: SeqState, span: tuple[int, int]) -> float | None:
    """Mean logprob of the tokens whose text overlaps characters [start, end)."""
    start, end = span
    picked = []
    prev = 0
    for lp, stop in zip(st.logprobs, st.ends):
        if stop > start and prev < end:
            picked.append(lp)
        prev = stop
    return sum(picked) / len(picked) if picked else None


def answer_logprob(st: SeqState, book: AnswerBook) -> float | None:
    """Mean logprob of the tokens of a finished sample's extracted answer (self-certainty)."""
    got = book.of(st) if st.finished else None
    return span_logprob(st, got.span) if got is not None else None


def mean_logprob(st: SeqState) -> float | None:
    return sum(st.logprobs) / len(st.logprobs) if st.logprobs else None


@dataclass(frozen=True)
class Decision:
    answer: str | None
    winner: int | None
    votes: dict[str, int]
    skipped: tuple[int, ...] = ()  # finished without an extractable answer: not counted as finishers


class Unstaged:
    """What a controller without probes or stages reports."""

    @property
    def records(self) -> Sequence[ProbeRecord]:
        return ()

    @property
    def outcome(self) -> Outcome | None:
        return None


@dataclass
class AllAtOnce:
    """Controllers that start all k samples at once."""

    k: int

    @property
    def n_seqs(self) -> int:
        return self.k

    @property
    def n_initial(self) -> int:
        return self.k


@dataclass
class OneBatch(AllAtOnce, Unstaged):
    """Controllers that start all k samples at once and need no probe slots."""

    @property
    def probe_slots(self) -> int:
        return 0

    @property
    def probe_cells(self) -> int:
        return 0

    def on_step(self, gen: BatchGenerator, events: Sequence[TokenEvent], book: AnswerBook) -> str | None:
        """Run every sample to its end."""
        return "all-finished" if not gen.live else None


class Controller(Protocol):
    @property
    def n_seqs(self) -> int: ...  # sequences to allocate

    @property
    def n_initial(self) -> int: ...  # sequences started at once

    @property
    def probe_slots(self) -> int: ...  # spare sequence ids for probes

    @property
    def probe_cells(self) -> int: ...  # KV cells one probe needs

    @property
    def records(self) -> Sequence[ProbeRecord]:
        """The probes this controller ran, in order."""

    @property
    def outcome(self) -> Outcome | None:
        """How a controller with stages ended (auto: confident, escalated, ...); None otherwise."""

    def on_step(self, gen: BatchGenerator, events: Sequence[TokenEvent], book: AnswerBook) -> str | None: ...

    def decide(self, gen: BatchGenerator, book: AnswerBook) -> Decision: ...
