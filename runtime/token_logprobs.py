"""Tokens with their log-probabilities, as OpenAI's ``logprobs`` report them: each token's
text and bytes, its model log-probability, and the step's most likely alternatives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from edgescale.runtime.engine import Engine, Logits
from edgescale.runtime.sampling import row_logsumexp, top_logprobs


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    text: str  # the token's bytes as UTF-8 (a piece of a character shows as U+FFFD; ``bytes`` is exact)
    bytes: tuple[int, ...]
    logprob: float | None  # the model's (temperature 1, before penalties, bias and constraints); None: a first token
    top: tuple[TokenLogprob, ...] = ()  # the step's most likely tokens, most likely first

    def to_dict(self) -> dict[str, object]:
        return {"token": self.text, "logprob": self.logprob, "bytes": list(self.bytes)}


def token_logprob(engine: Engine, token: int, logprob: float | None,
                  top: Sequence[tuple[int, float]] = ()) -> TokenLogprob:
    piece = engine.token_bytes(token)
    return TokenLogprob(token, piece.decode("utf-8", errors="replace"), tuple(piece), logprob,
                        tuple(token_logprob(engine, t, lp) for t, lp in top))


def token_logprobs(engine: Engine, tokens: Sequence[int], logprobs: Sequence[float],
                   tops: Sequence[Sequence[tuple[int, float]]]) -> tuple[TokenLogprob, ...]:
    """One record per token; ``tops`` may be empty (no alternatives asked for)."""
    return tuple(token_logprob(engine, t, lp, tops[i] if i < len(tops) else ())
                 for i, (t, lp) in enumerate(zip(tokens, logprobs)))


SCORE_CHUNK = 256  # prompt positions scored per decode: their logits rows are 4 x vocabulary bytes each


def prompt_logprobs(engine: Engine, tokens: Sequence[int], top: int = 0) -> tuple[TokenLogprob, ...]:
    """Each prompt token's log-probability given the tokens before it (the first has none), and
    with ``top`` the most likely tokens at each position: one read of the prompt with logits on
    every position (``DecodeSession.decode_all``), in a session of its own, ``SCORE_CHUNK``
    positions at a time (the rows of a whole long prompt would take gigabytes)."""
    n = len(tokens)
    out = [token_logprob(engine, tokens[0], None)]
    session = engine.session(n_seqs=1, n_cells=n + 1, max_batch=max(32, min(n, SCORE_CHUNK)))
    try:
        scratch: Logits | None = None
        for start in range(0, n - 1, SCORE_CHUNK):  # row i predicts token i + 1: the last needs no row
            rows = session.decode_all(0, tokens[start : min(start + SCORE_CHUNK, n - 1)])
            if scratch is None:
                scratch = rows[0].copy()
            for j, row in enumerate(rows):
                nxt = tokens[start + j + 1]
                peak = float(row.max())
                lse = row_logsumexp(row, scratch, peak)
                alts = top_logprobs(row, lse, top, peak) if top else ()
                out.append(token_logprob(engine, nxt, float(row[nxt]) - lse, alts))
    finally:
        session.close()
    return tuple(out)
