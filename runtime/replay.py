"""Teacher-forced replay: the logits a backend computes for given token sequences.

Used to measure what the determinism contract promises (README, "Determinism"):
replay the samples of a batch together, then each one alone, and compare the
logits row by row. Sequences end the way the step loop ends them: a sequence is
removed in the step after its last token (or at once when it holds the
``max_new`` cap), so the replay makes exactly the decode calls a generation made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgescale.runtime.engine import DecodeSession, Engine, Logits


def peak_live_cells(seqs: Sequence[Sequence[int]], max_new: int) -> int:
    """The most cells the samples' own tokens hold at once when ended samples free theirs."""
    def holds(seq: Sequence[int], t: int) -> int:
        # after step t's decode a sequence holds t + 1 tokens while it goes on
        ends = len(seq) - 1 if len(seq) >= max_new else len(seq)
        return t + 1 if t < ends else 0

    longest = max((len(s) for s in seqs), default=0)
    return max((sum(holds(s, t) for s in seqs) for t in range(longest)), default=0)


def replay(
    engine: Engine, prompt: Sequence[int], seqs: Sequence[Sequence[int]], *, max_new: int, tight: bool = False,
) -> tuple[list[list[Logits]], DecodeSession]:
    """Rows[i][t]: the logits sequence i's token t was drawn from (t = 0 is the prompt's).

    ``tight``: another sequence takes every cell the samples do not need at their peak
    (as another query in a shared context would), so the cells of ended samples must
    be handed back and reused while the others go on. The session is returned open
    (the caller closes it) so its counters can be read.
    """
    n = len(seqs)
    total = sum(len(s) for s in seqs)
    session = engine.session(n_seqs=n + 1, n_cells=len(prompt) + total + 2, max_batch=max(32, len(prompt), n))
    try:
        first = np.array(session.prefill(list(prompt), list(range(n))))
        if tight:
            ballast = session.n_cells - len(prompt) - peak_live_cells(seqs, max_new) - 1
            for start in range(0, ballast, 32):
                session.decode([(n, [int(prompt[-1])] * min(32, ballast - start))])
        rows: list[list[Logits]] = [[first] for _ in range(n)]
        live = list(range(n))
        t = 0
        while live:
            feeds = []
            for i in list(live):
                done = t >= len(seqs[i]) or (t == len(seqs[i]) - 1 and len(seqs[i]) >= max_new)
                if done:
                    session.remove(i)
                    live.remove(i)
                else:
                    feeds.append((i, [int(seqs[i][t])]))
            if not feeds:
                break
            out = session.decode(feeds)
            for j, (i, _) in enumerate(feeds):
                rows[i].append(np.array(out[j]))
            t += 1
    except BaseException:
        session.close()
        raise
    return rows, session


@dataclass(frozen=True)
class RowDiff:
    steps: int  # rows compared
    identical: int  # rows bitwise equal
    top1_agree: int  # rows with the same argmax
    max_abs: float  # largest |logit difference| of any token in any row
    first_diff: int | None  # first row that is not bitwise equal


def compare_rows(a: Sequence[Logits], b: Sequence[Logits]) -> RowDiff:
    n = min(len(a), len(b))
    identical = top1 = 0
    worst = 0.0
    first: int | None = None
    for t in range(n):
        x, y = np.asarray(a[t], dtype=np.float32), np.asarray(b[t], dtype=np.float32)
        same = bool(np.array_equal(x, y))
        identical += same
        if not same and first is None:
            first = t
        top1 += int(np.argmax(x) == np.argmax(y))
        worst = max(worst, float(np.abs(x - y).max()))
    return RowDiff(n, identical, top1, worst, first)
