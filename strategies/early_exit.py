"""Early exit by probing the reasoning (Dynasor-CoT).

Fu et al., 2025, "Efficiently Scaling LLM Reasoning with Certaindex"
(Dynasor): every T generated tokens, append an answer cue (e.g. "... Final
answer: \\boxed{") to a copy of the sequence, decode a few greedy tokens,
extract the answer, and stop once the last w probes give the same non-empty
answer and the probe text does not hedge.

The probe runs on a fork (the sequence's KV shared into a spare sequence id),
so the sequence itself continues exactly as if it had not been probed. The
reference implementation's exit check returns True unconditionally (Dynasor
issue #25); here the agreement test is real and tested. With k > 1 each sample
exits on its own and the final answer is the majority over the samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from edgescale.runtime.generate import BatchGenerator, TokenEvent
from edgescale.strategies.base import AllAtOnce, AnswerBook, Decision, vote
from edgescale.strategies.records import Outcome, ProbeRecord

ANSWER_CUE = "\n\n**Final answer:** \\boxed{"


def probe_done(text: str) -> bool:
    """A probe can stop decoding once the box closes or the line ends."""
    return "}" in text or "\n" in text


@dataclass
class EarlyExitController(AllAtOnce):
    k: int = 1
    cue: list[int] = field(default_factory=list)
    every: int = 32
    window: int = 2
    probe_tokens: int = 20
    history: dict[int, list[str | None]] = field(default_factory=dict)
    records: list[ProbeRecord] = field(default_factory=list)

    @property
    def probe_slots(self) -> int:
        return self.k

    @property
    def probe_cells(self) -> int:
        return len(self.cue) + self.probe_tokens

    @property
    def outcome(self) -> Outcome | None:
        return None

    def agreed(self, index: int) -> str | None:
        """The answer the last ``window`` probes of ``index`` agree on, if any."""
        last = self.history.get(index, [])[-self.window :]
        if len(last) < self.window or last[0] is None:
            return None
        return last[0] if all(a == last[0] for a in last) else None

    def on_step(self, gen: BatchGenerator, events: Sequence[TokenEvent], book: AnswerBook) -> str | None:
        due = [i for i in gen.live if gen.states[i].tokens and len(gen.states[i].tokens) % self.every == 0]
        if due:
            for res in gen.probe(due, self.cue, max_tokens=self.probe_tokens, done=probe_done):
                got, hedged = book.probe_answer(res)
                answer = got.value if got is not None and not hedged else None
                n_tok = len(gen.states[res.index].tokens)
                self.records.append(ProbeRecord(res.index, n_tok, res.text, answer, hedged))
                self.history.setdefault(res.index, []).append(answer)
                agreed = self.agreed(res.index)
                if agreed is not None:
                    book.set_probe_answer(res.index, agreed)
                    gen.cancel(res.index, "early-exit")
        if not gen.live:
            exited = any(s.finish_reason == "early-exit" for s in gen.states)
            return "probes-agreed" if exited else "all-finished"
        return None

    def decide(self, gen: BatchGenerator, book: AnswerBook) -> Decision:
        # A sample that ran to its end without an extractable answer falls back to
        # its last non-empty probe answer.
        for s in gen.states:
            if s.finished and book.value(s) is None:
                last = next((a for a in reversed(self.history.get(s.index, [])) if a is not None), None)
                if last is not None:
                    book.set_probe_answer(s.index, last)
        out = vote(gen, book, [s.index for s in gen.states if s.finished])
        winner = out.winner if out.winner is not None else 0
        return Decision(out.answer, winner, out.votes)
