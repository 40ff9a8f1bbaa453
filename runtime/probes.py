"""Probes of a step loop's samples (``BatchGenerator.probe``): forks decoded greedily."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from edgescale.errors import DecodeAborted
from edgescale.runtime.detok import IncrementalText
from edgescale.runtime.samples import ProbeResult
from edgescale.runtime.sampling import GREEDY, make_sampler


def run_probes(
    gen: Any,  # a runtime.generate.BatchGenerator (which imports this module)
    indices: Sequence[int],
    cue_tokens: Sequence[int],
    *,
    max_tokens: int = 20,
    done: Callable[[str], bool] | None = None,
    within_deadline: bool = True,
) -> list[ProbeResult]:
    """Ask live sequences for their answer so far without disturbing them.

    Each sequence is forked into a spare slot (sharing its cells), the cue is
    appended there, up to ``max_tokens`` greedy tokens are decoded for all
    probes in one batch per step, and the forks are removed. A session whose
    probes run in place (one KV stream per sequence, where a fork would copy the
    stream) appends the cue to the sequence itself and cuts it off after. With
    ``within_deadline`` a probe stops early when the deadline passes (its text
    so far is returned); a forced-answer probe at the deadline passes False.
    """
    con = gen.constraints
    if con is not None and con.has_tail:
        # the probe is the answer tail: its lead-in, then a constrained greedy answer
        indices = [i for i in indices if gen.states[i].tail_at is None]
        cue_tokens, done = con.lead, None
    indices = [i for i in indices if i in gen._rows][: gen.probe_slots]
    if not indices or not cue_tokens:
        return []
    matchers = con.probe_matchers(indices) if con is not None else {}
    gen.own_rows()  # the rows are views into the backend's buffer, which the probe overwrites
    in_place = gen.session.probes_in_place
    spares = {i: i if in_place else gen.n_seqs + j for j, i in enumerate(indices)}
    held = {i: len(gen.prompt) + len(gen.states[i].tokens) for i in indices}  # each sample's cells
    texts = {i: IncrementalText() for i in indices}
    if matchers:
        assert con is not None
        for t in texts.values():
            t.feed(con.lead_bytes)
    counts = {i: len(cue_tokens) for i in indices}
    pick = make_sampler(GREEDY)
    try:
        for i, s in spares.items():
            if not in_place:
                gen.session.fork(i, s)
        rows = gen.session.decode([(spares[i], list(cue_tokens)) for i in indices])
        active = list(indices)
        for _ in range(max_tokens):
            if within_deadline and gen.deadline is not None and gen.deadline.passed(gen.clock()):
                break
            nxt: list[int] = []
            feeds: list[tuple[int, list[int]]] = []
            for n, i in enumerate(active):
                m = matchers.get(i)
                tok = pick(m.mask(rows[n]) if m is not None else rows[n], gen._rngs[i], 0.0)
                if gen.engine.is_eog(tok):
                    continue
                texts[i].feed(gen.engine.token_bytes(tok))
                if m is not None and (not m.consume(tok) or m.stopped):
                    continue
                if done is not None and done(texts[i].text):
                    continue
                nxt.append(i)
                feeds.append((spares[i], [tok]))
            active = nxt
            if not feeds:
                break
            rows = gen.session.decode(feeds)
            for i in active:
                counts[i] += 1
    except DecodeAborted:
        gen.expired = True
    finally:
        if con is not None:
            con.account(list(matchers.values()))
        for i, s in spares.items():
            if in_place:
                gen.session.truncate(i, held[i])
            else:
                gen.session.remove(s)
    gen.stats.probes += len(indices)
    gen.stats.probe_tokens += sum(counts.values())
    out = []
    for i in indices:
        texts[i].flush()
        out.append(ProbeResult(i, texts[i].text, counts[i], tail=bool(matchers)))
    return out
