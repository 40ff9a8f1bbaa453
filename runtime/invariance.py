"""Whether an engine's kernels compute a sequence's row the same at every batch width:
what ``--deterministic`` rests on (a matmul that rounds by width cannot be made exact
by any arrangement of the batch; measured: Gemma 3 270M's Q4_K_M differs by up to 0.98
in a logit on an Intel Xeon with AVX-512, SmolLM2's Q4_1 and Q4_0 do not)."""

from __future__ import annotations

import numpy as np

from edgescale.runtime.engine import Engine

PROBE_TEXT = "Tell me a short story about a cat and a lighthouse."
WIDTHS = (1, 2, 3, 5, 8, 9)


def width_variance(engine: Engine, kv_layout: str = "exact") -> float:
    """The largest difference of a logit of one sequence decoded alone against the same
    sequence decoded beside 1 to 8 others (0.0: the kernels are width-invariant), in an
    engine's exact layout. A few decodes of a short prompt."""
    prompt = engine.format_prompt(PROBE_TEXT)
    n = max(WIDTHS)
    session = engine.session(n_seqs=n, n_cells=n * (len(prompt) + 8), max_batch=max(len(prompt), n),
                             kv_layout=kv_layout)
    try:
        session.prefill(prompt, list(range(n)))
        tokens = [engine.tokenize(w)[-1] for w in (" the", " a", " cat", " sea", " light", " and", " of", " to", " in")]
        alone = {}
        for s in range(n):
            alone[s] = np.array(session.decode([(s, [tokens[s]])])[0])
            session.truncate(s, len(prompt))
        worst = 0.0
        for width in WIDTHS[1:]:
            rows = session.decode([(s, [tokens[s]]) for s in range(width)])
            worst = max(worst, max(float(np.abs(rows[s] - alone[s]).max()) for s in range(width)))
            for s in range(width):
                session.truncate(s, len(prompt))
        return worst
    finally:
        session.close()
