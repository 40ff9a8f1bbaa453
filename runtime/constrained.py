"""The constraint state of one query's samples in the step loop (``runtime.generate``).

Each sample under a constraint has its own :class:`~edgescale.runtime.constraints.Matcher`,
cloned from one compiled per query when the sample starts. With an answer tail, a sample
reasons freely until it ends or reaches its reasoning cap; then the tail's lead-in is fed
and its answer is decoded greedily under the tail's constraint. Probes (early exit, the
forced answer at a deadline) decode the same tail.
"""

from __future__ import annotations

from typing import Sequence

from edgescale.errors import UsageError
from edgescale.runtime.constraints import Matcher
from edgescale.runtime.engine import Engine
from edgescale.runtime.samples import GenerationConfig, SeqState


class SampleConstraints:
    def __init__(self, engine: Engine, config: GenerationConfig) -> None:
        vocab_of = getattr(engine, "constraint_vocab", None)
        if vocab_of is None:
            raise UsageError(f"the {getattr(engine, 'backend_name', '?')} backend cannot constrain output")
        vocab = vocab_of()
        self.base: Matcher | None = vocab.matcher(config.constraint) if config.constraint is not None else None
        tail = config.tail
        self.tail_base: Matcher | None = vocab.matcher(tail.constraint) if tail is not None else None
        self.lead: list[int] = (engine.tokenize(tail.lead, add_special=False, parse_special=False)
                                if tail is not None else [])
        self.lead_bytes = b"".join(engine.token_bytes(t) for t in self.lead)
        # a sample's tokens, lead-in and answer included, stay within max_new_tokens
        self.reasoning_cap = (max(1, config.max_new_tokens - len(self.lead) - tail.max_tokens)
                              if tail is not None else config.max_new_tokens)
        self.matchers: dict[int, Matcher] = {}
        self.mask_seconds = 0.0
        self.masks = 0
        self.checks = 0

    @property
    def has_tail(self) -> bool:
        return self.tail_base is not None

    def start(self, index: int) -> None:
        if self.base is not None:
            self.matchers[index] = self.base.clone()

    def matcher(self, index: int) -> Matcher | None:
        return self.matchers.get(index)

    def cap(self, st: SeqState, max_new_tokens: int) -> int:
        """The sample's token limit now: its reasoning cap until its tail begins."""
        return self.reasoning_cap if self.has_tail and st.tail_at is None else max_new_tokens

    def wants_tail(self, st: SeqState) -> bool:
        return self.has_tail and st.tail_at is None

    def begin_tail(self, st: SeqState) -> list[int]:
        """The sample's answer begins: its matcher is the tail's; returns the lead-in tokens."""
        assert self.tail_base is not None
        self.drop(st.index)
        st.tail_at = len(st.tokens)
        self.matchers[st.index] = self.tail_base.clone()
        return list(self.lead)

    def probe_matchers(self, indices: Sequence[int]) -> dict[int, Matcher]:
        """Fresh tail matchers for probes of these samples (empty: no tail)."""
        if self.tail_base is None:
            return {}
        return {i: self.tail_base.clone() for i in indices}

    def account(self, matchers: Sequence[Matcher]) -> None:
        for m in matchers:
            self.mask_seconds += m.mask_seconds
            self.masks += m.masks
            self.checks += m.checks
            m.mask_seconds, m.masks, m.checks = 0.0, 0, 0

    def drop(self, index: int) -> None:
        m = self.matchers.pop(index, None)
        if m is not None:
            self.account([m])

