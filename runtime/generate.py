"""The one batched step loop every strategy runs on.

:class:`BatchGenerator` prefills the prompt once for up to ``n_seqs``
sequences (they share the prompt's KV cells), then each :meth:`step` samples
one token for every live sequence and decodes them together in one batch.
Strategies are controllers over this loop: after each step they may cancel
sequences (their KV is freed at once), start more (waves), or fork a sequence
into a spare slot to probe it (:meth:`probe`), and they decide when the query
is done.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from edgescale.deadline import Deadline
from edgescale.errors import DecodeAborted, UsageError
from edgescale.runtime.constrained import SampleConstraints
from edgescale.runtime.engine import DecodeSession, Engine, Feed, Logits
from edgescale.runtime.probes import run_probes
from edgescale.runtime.samples import (
    MAX_BATCH,
    MIN_BATCH,
    FinishReason,
    GenerationConfig,
    GenerationStats,
    ProbeResult,
    SeqState,
    TokenEvent,
    batch_size,
)
from edgescale.runtime.sampling import (
    GREEDY,
    Adjuster,
    Sampler,
    SamplingConfig,
    make_adjuster,
    make_sampler,
    row_logsumexp,
    sequence_rng,
    token_confidence,
    top_logprobs,
)

__all__ = ["MAX_BATCH", "MIN_BATCH", "BatchGenerator", "FinishReason", "GenerationConfig", "GenerationStats",
           "ProbeResult", "SeqState", "TokenEvent", "batch_size", "token_confidence"]

class BatchGenerator:
    """Runs up to ``n_seqs`` samples of one prompt in one batched step loop.

    Two ways to own the loop. Alone (no ``lane``): the generator opens a session sized
    for this query (``n_cells``, default: the engine's layout's count for these
    samples and probes), reads the prompt at once and :meth:`step` decodes. Shared (a
    ``lane``: this query's view of a session other queries use too): the prompt is
    read in chunks of ``prefill_chunk`` tokens as feeds of the shared steps, starting
    after the first ``prefix`` tokens (already in sequence 0's cells, from the prefix
    cache), and whoever owns the loop calls :meth:`feeds`, decodes every query's feeds
    in one batch and hands each query its rows with :meth:`take`.
    """

    def __init__(
        self,
        engine: Engine,
        prompt_tokens: Sequence[int],
        config: GenerationConfig,
        *,
        n_seqs: int,
        n_initial: int | None = None,
        probe_slots: int = 0,
        probe_cells: int = 0,
        n_cells: int | None = None,
        deadline: Deadline | None = None,
        clock: Callable[[], float] = time.perf_counter,
        lane: DecodeSession | None = None,
        prefix: int = 0,
        prefill_chunk: int = MAX_BATCH,
    ) -> None:
        if n_seqs < 1:
            raise UsageError("at least one sample is needed")
        if config.max_new_tokens < 1:
            raise UsageError("max_new_tokens must be at least 1")
        self.engine = engine
        self.prompt = list(prompt_tokens)
        self.config = config
        self.n_seqs = n_seqs
        self.probe_slots = probe_slots
        self.deadline = deadline
        self.clock = clock
        self.stats = GenerationStats(prompt_tokens=len(self.prompt), cached_prompt_tokens=prefix)
        self.states = [SeqState(index=i, seed=config.seed + i) for i in range(n_seqs)]
        self.live: list[int] = []
        self.expired = False
        made: dict[SamplingConfig, Sampler] = {}
        for i in range(n_seqs):
            cfg = config.sampling_of(i)
            if cfg not in made:
                made[cfg] = make_sampler(cfg)
        self._samplers = [made[config.sampling_of(i)] for i in range(n_seqs)]
        # bias and penalties (None: the row as the model gave it), and the counts the penalties read
        self._adjusters = [make_adjuster(config.sampling_of(i)) for i in range(n_seqs)]
        self._counts: list[dict[int, int]] = [{} for _ in range(n_seqs)]
        self._greedy = make_sampler(GREEDY)
        self.constraints = (SampleConstraints(engine, config)
                            if config.constraint is not None or config.tail is not None else None)
        self._rngs = [sequence_rng(config.seed + i) for i in range(n_seqs)]
        self._stop = tuple(s for s in config.stop if s)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._rows: dict[int, Logits] = {}  # live index -> logits row for its next token
        self._fed: list[int] = []  # live indices of the last feeds(), in feed order
        self._prefill_row: Logits | None = None
        self._scratch: Logits | None = None
        self._n_initial = n_initial if n_initial is not None else n_seqs
        self._t0 = clock()
        if lane is not None:
            if not 0 <= prefix < len(self.prompt):
                raise UsageError("a cached prefix must leave at least one prompt token to read")
            self.session: DecodeSession = lane
            self._prompt_read = prefix
            self._chunk = max(1, prefill_chunk)
            return
        self._prompt_read = 0
        self._chunk = len(self.prompt)
        if n_cells is None:
            n_cells = engine.memory_layout.kv_cells(
                prompt_tokens=len(self.prompt), n_seqs=n_seqs, new_tokens=config.max_new_tokens,
                probe_slots=probe_slots, probe_cells=probe_cells)
        n_ids = engine.memory_layout.seq_ids(n_seqs, probe_slots)
        self.session = engine.session(n_seqs=n_ids, n_cells=n_cells, max_batch=batch_size(len(self.prompt), n_ids))
        try:
            # A long prefill can be interrupted mid-decode; steps are checked between
            # decodes instead (the C-level check costs ~2 ms a step, see _llama_ffi).
            if deadline is not None and deadline.bounded:
                self.session.set_abort_check(lambda: deadline.passed(clock()))
            row = self.session.prefill(self.prompt, list(range(n_seqs)))
            self.session.set_abort_check(None)
        except BaseException:  # DecodeAborted at a deadline included: the caller answers from nothing
            self.session.close()
            raise
        self._prompt_read = len(self.prompt)
        self._start(row)

    def _start(self, row: Logits) -> None:
        self._prefill_row = np.array(row)  # kept: later waves start from it
        self._scratch = np.empty_like(self._prefill_row)
        self.stats.prefill_s = self.clock() - self._t0
        self.activate(range(self._n_initial))

    def set_chunk(self, n_tokens: int) -> None:
        """Prompt tokens the next steps read (shared loop, while reading the prompt)."""
        self._chunk = max(1, n_tokens)

    @property
    def reading_prompt(self) -> bool:
        """Still reading the prompt (shared loop only); no sample has started."""
        return self._prefill_row is None

    # -- lifecycle -----------------------------------------------------------
    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "BatchGenerator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def now(self) -> float:
        """Seconds since the generator started."""
        return self.clock() - self._t0

    # -- sequences -------------------------------------------------------------
    def pending(self) -> list[int]:
        """Sequences not started yet (available for a later wave)."""
        return [s.index for s in self.states if s.started_at is None]

    def activate(self, indices: Sequence[int] | range) -> None:
        """Start sequences: they draw their first token from the prompt's logits."""
        assert self._prefill_row is not None
        for i in indices:
            st = self.states[i]
            if st.started_at is not None:
                continue
            st.started_at = self.now()
            if self.constraints is not None:
                self.constraints.start(i)
            self.live.append(i)
            self._rows[i] = self._prefill_row

    def cancel(self, index: int, reason: FinishReason = "cancelled") -> None:
        """Stop a live sequence now and free its KV cells."""
        st = self.states[index]
        if st.finished:
            return
        self._finish(st, reason)
        if index in self.live:
            self.live.remove(index)
            self._rows.pop(index, None)
        if self.constraints is not None:
            self.constraints.drop(index)
        self.session.remove(index)

    def _finish(self, st: SeqState, reason: FinishReason) -> None:
        st.finish_reason = reason
        st.finished_step = self.stats.decode_steps
        st.finished_at = self.now()
        tail = st._text.flush()
        if tail:
            st._visible += tail

    # -- the step ------------------------------------------------------------
    def step(self) -> list[TokenEvent]:
        """Sample one token for every live sequence, then decode them in one batch."""
        events, feeds = self.feeds()
        if feeds:
            try:
                rows = self.session.decode(feeds)
            except DecodeAborted:
                self.expired = True
                for i in self._fed:
                    self._rows.pop(i, None)
                return events
            self.take(rows)
        return events

    def feeds(self) -> tuple[list[TokenEvent], list[Feed]]:
        """This step's work before the decode: while reading the prompt, its next chunk
        (for sequence 0); then one sampled token for every live sequence. Returns the
        events (one per sampled token) and the feeds to decode."""
        if self._prefill_row is None:
            chunk = self.prompt[self._prompt_read : self._prompt_read + self._chunk]
            self._fed = []
            return [], [(0, chunk)]
        if not self.live:
            self._fed = []
            return [], []
        events: list[TokenEvent] = []
        feeds: list[Feed] = []
        cfg = self.config
        lse_cache: dict[int, tuple[float, float]] = {}
        assert self._scratch is not None
        con = self.constraints
        for i in list(self.live):
            st = self.states[i]
            row = self._rows[i]
            m = con.matcher(i) if con is not None else None
            key = id(row)
            cached = lse_cache.get(key)
            if cached is None:
                top = float(row.max())
                cached = lse_cache[key] = (top, row_logsumexp(row, self._scratch, top))
            top, lse = cached
            sampler = self._greedy if st.tail_at is not None else self._samplers[i]
            adjust = self._adjusters[i]
            drawn, peak = (row, top) if adjust is None else self._adjusted(adjust, row, i)
            tok = sampler(drawn, self._rngs[i], peak)
            dead_end = False
            if m is not None and not m.allows(tok):
                # llama.cpp's order: the token drawn from the model's row stands when the constraint
                # allows it (a check of a few us); else the row is masked and drawn from again
                masked = m.mask(drawn)  # its own buffer: the row may be another sample's too
                best = float(masked.max())
                dead_end = best == float("-inf")  # nothing allowed (a vocabulary that cannot go on)
                if not dead_end:
                    tok = sampler(masked, self._rngs[i], best)
            lp = float(row[tok]) - lse  # the model's log-probability, constrained or not
            reason: FinishReason | None = None
            feed = [tok]
            if dead_end or (self.engine.is_eog(tok) and (m is not None or not cfg.ignore_eos)):
                reason, feed = "stop", []
            else:
                st.tokens.append(tok)
                st.logprobs.append(lp)
                if adjust is not None:
                    self._counts[i][tok] = self._counts[i].get(tok, 0) + 1
                if cfg.top_logprobs:
                    st.top_logprobs.append(top_logprobs(row, lse, cfg.top_logprobs, top))
                if cfg.confidence_top_k:
                    st.confidences.append(token_confidence(row, lse, cfg.confidence_top_k))
                reason = self._append_text(st, self.engine.token_bytes(tok))
                st.ends.append(len(st._visible))
                if m is not None and not m.consume(tok):
                    reason = "stop"
                elif m is not None and m.stopped:
                    reason = "stop"
                limit = con.cap(st, cfg.max_new_tokens) if con is not None else cfg.max_new_tokens
                if reason is None and len(st.tokens) >= limit:
                    reason = "length"
            if reason is not None and con is not None and con.wants_tail(st):
                lead = con.begin_tail(st)
                self.stats.tail_tokens += len(lead)
                st._visible += st._text.feed(con.lead_bytes)
                reason, feed = None, feed + lead
            elif reason is not None and m is not None:
                st.valid = m.accepting and not m.failed
            if reason is not None:
                self._finish(st, reason)
                self.live.remove(i)
                del self._rows[i]
                if con is not None:
                    con.drop(i)
                self.session.remove(i)
            else:
                feeds.append((i, feed))
            events.append(TokenEvent(i, tok, lp, self._take_delta(st), reason))
        if self.stats.first_token_s is None:
            self.stats.first_token_s = self.now()
        self.stats.decode_steps += 1
        self._fed = [i for i, _ in feeds]
        return events, feeds

    def _adjusted(self, adjust: Adjuster, row: Logits, i: int) -> tuple[Logits, float]:
        out = adjust(row, self._counts[i])
        return out, float(out.max())

    def own_rows(self) -> None:
        """Copy the logits rows held as views of the backend's buffer (before a decode that is
        not this generator's step overwrites it)."""
        for i in self._rows:
            self._rows[i] = np.array(self._rows[i])

    def take(self, rows: Logits) -> None:
        """The logits rows of the last :meth:`feeds`, in feed order (views are fine: a row is
        read before the next decode)."""
        if self._prefill_row is None:
            self._prompt_read = min(len(self.prompt), self._prompt_read + self._chunk)
            if self._prompt_read < len(self.prompt):
                return
            for i in range(1, self.n_seqs):  # every sample shares the prompt's cells
                self.session.fork(0, i)
            self._start(rows[-1])
            return
        for n, i in enumerate(self._fed):
            self._rows[i] = rows[n]

    def _append_text(self, st: SeqState, piece: bytes) -> FinishReason | None:
        delta = st._text.feed(piece)
        if not delta:
            return None
        before = len(st._visible)
        st._visible += delta
        if not self._stop or st.tail_at is not None:  # an answer tail is not cut by stop strings
            return None
        window_start = max(0, before - self._hold)
        hits = [st._visible.find(s, window_start) for s in self._stop]
        hits = [h for h in hits if h >= 0]
        if hits:
            st._visible = st._visible[: min(hits)]
            return "stop"
        return None

    def _take_delta(self, st: SeqState) -> str:
        end = len(st._visible) if st.finished else max(st._emitted, len(st._visible) - self._hold)
        delta = st._visible[st._emitted : end]
        st._emitted = end
        return delta

    # -- probing ---------------------------------------------------------------
    def probe(
        self,
        indices: Sequence[int],
        cue_tokens: Sequence[int],
        *,
        max_tokens: int = 20,
        done: Callable[[str], bool] | None = None,
        within_deadline: bool = True,
    ) -> list[ProbeResult]:
        """Ask live sequences for their answer so far without disturbing them
        (:func:`edgescale.runtime.probes.run_probes`)."""
        return run_probes(self, indices, cue_tokens, max_tokens=max_tokens, done=done,
                          within_deadline=within_deadline)

    # -- accounting --------------------------------------------------------------
    @property
    def generated_tokens(self) -> int:
        """Tokens the samples decoded: theirs, and the lead-ins of their answer tails."""
        return sum(len(s.tokens) for s in self.states) + self.stats.tail_tokens

    @property
    def mask_seconds(self) -> float:
        """Time spent computing and applying constraint masks."""
        if self.constraints is None:
            return 0.0
        self.constraints.account(list(self.constraints.matchers.values()))
        return self.constraints.mask_seconds

    def kv_bytes_peak(self) -> int:
        return self.session.kv_bytes_peak()
