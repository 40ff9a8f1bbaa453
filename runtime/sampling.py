"""Token samplers as plain callables composed from small pure functions.

One implementation for every backend (llama.cpp and ONNX Runtime), so the
same seed gives the same tokens whatever runs the model. Filter order follows
llama.cpp's default chain: top-k, top-p, min-p on the model's distribution,
then temperature, then a seeded categorical draw. Before them, when asked for,
the row is adjusted (:func:`make_adjuster`): OpenAI's ``logit_bias``, then its
frequency and presence penalties over the sample's own tokens so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

Logits = npt.NDArray[np.float32]
# (logits row, the sequence's RNG, logits.max()) -> token id. The max is passed in
# because the caller needs it too, and every pass over a vocabulary-sized row costs.
Sampler = Callable[[Logits, np.random.Generator, float], int]


@dataclass(frozen=True)
class SamplingConfig:
    """How one sequence picks its next token. temperature <= 0 means greedy."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    # OpenAI's: logit[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty, c[j] the
    # times token j is among the sample's tokens so far; logit_bias: (token id, bias) pairs added first
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def adjusts(self) -> bool:
        """Whether the row is changed before the filters (bias or penalties)."""
        return bool(self.logit_bias) or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


GREEDY = SamplingConfig(temperature=0.0)


def log_softmax_at(logits: npt.NDArray[np.float32], tokens: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Model log-probabilities (temperature 1) of ``tokens[i]`` under row ``i`` of ``logits``."""
    rows = np.atleast_2d(logits)
    m = rows.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(rows - m, dtype=np.float32).sum(axis=1, dtype=np.float64))
    picked = rows[np.arange(rows.shape[0]), tokens]
    return picked.astype(np.float64) - lse


def top_k_candidates(logits: Logits, k: int, top: float | None = None) -> npt.NDArray[np.int64]:
    """Indices of the k largest logits, largest first (all of them when k <= 0).
    ``top`` is ``logits.max()`` when the caller already has it."""
    n = logits.shape[0]
    if not 0 < k < n:
        idx = np.arange(n)
    else:
        # Partition only the ids near the maximum when at least k of them are there
        # (exact: every top-k logit is >= the threshold then); a vocabulary-wide
        # argpartition costs ~150 us a row here, the narrowed one ~20 us.
        if top is None:
            top = float(logits.max())
        for delta in (8.0, 16.0):
            near = np.flatnonzero(logits >= top - delta)
            if near.shape[0] >= k:
                idx = near[np.argpartition(logits[near], near.shape[0] - k)[near.shape[0] - k :]]
                break
        else:
            idx = np.argpartition(logits, n - k)[n - k :]
    return idx[np.argsort(-logits[idx], kind="stable")]


def row_logsumexp(row: Logits, scratch: Logits, top: float) -> float:
    """log(sum(exp(row))) given ``top = row.max()``, using ``scratch`` (same shape).

    This runs once per sequence per step over the whole vocabulary, so it avoids
    temporaries: on this CPU numpy's float32 exp costs ~2 ns an element.
    """
    m = top
    np.subtract(row, m, out=scratch)
    np.exp(scratch, out=scratch)
    return m + float(np.log(scratch.sum(dtype=np.float64)))


def token_confidence(row: Logits, lse: float, k: int) -> float:
    """DeepConf's token confidence: minus the mean log-probability of the row's top ``k``
    candidates (high when the model is sure: the top candidates are then all unlikely but one)."""
    k = min(k, row.shape[-1])
    top = np.partition(row, row.shape[-1] - k)[-k:]
    return lse - float(top.mean(dtype=np.float64))


# The filters below work on the few surviving candidates as plain Python floats:
# right after a decode numpy's code is cold in the CPU caches and each small
# numpy call costs ~20 us here, while these loops over <= 64 floats cost a few.
def top_p_keep(weights: Sequence[float], top_p: float, total: float | None = None) -> int:
    """How many of the descending (unnormalised) weights the nucleus keeps: the fewest
    whose mass reaches ``top_p`` of ``total`` (default: their own sum); at least 1."""
    n = len(weights)
    if top_p >= 1.0:
        return n
    mass = top_p * (math.fsum(weights) if total is None else total)
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if acc >= mass:
            return i + 1
    return n


def min_p_keep(weights: Sequence[float], min_p: float) -> int:
    """How many of the descending weights are >= min_p x the largest; at least 1."""
    if min_p <= 0.0 or not weights:
        return len(weights)
    floor = min_p * weights[0]
    n = 1
    while n < len(weights) and weights[n] >= floor:
        n += 1
    return n


def draw(logits_sorted: Sequence[float], temperature: float, u: float) -> int:
    """Position drawn from softmax(logits / T) by inverse CDF with uniform ``u`` in [0, 1)."""
    top = logits_sorted[0]
    weights = [math.exp((x - top) / temperature) for x in logits_sorted]
    target = u * math.fsum(weights)
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if target < acc:
            return i
    return len(weights) - 1


def draw_full(logits: Logits, temperature: float, u: float) -> int:
    """Token drawn from softmax(logits / T) over the whole vocabulary (no filters)."""
    cum = np.cumsum(np.exp((logits.astype(np.float64) - float(logits.max())) / temperature))
    return int(min(np.searchsorted(cum, u * cum[-1], side="right"), cum.shape[0] - 1))


def candidates(
    logits: Logits, cfg: SamplingConfig, top: float | None = None
) -> tuple[npt.NDArray[np.int64], float | None]:
    """Candidate ids, largest logit first, and the total weight top-p is measured against.

    With top-k, top-p is measured within the k survivors (llama.cpp's order; total
    None). Without it, top-p is measured against the whole vocabulary, and only as
    many ids are sorted as the nucleus needs: a partial sort is widened until it
    holds the top-p mass, so the result is exact and the vocabulary is rarely sorted.
    """
    if cfg.top_k > 0:
        return top_k_candidates(logits, cfg.top_k, top), None
    n = logits.shape[0]
    top = float(logits.max()) if top is None else top
    total = float(np.exp(logits.astype(np.float64) - top).sum())
    for width in (64, 1024):
        if width >= n:
            break
        idx = top_k_candidates(logits, width, top)
        if np.exp(logits[idx].astype(np.float64) - top).sum() >= cfg.top_p * total:
            return idx, total
    return top_k_candidates(logits, 0), total


def make_sampler(cfg: SamplingConfig) -> Sampler:
    """Build the sampler for ``cfg``: greedy argmax, or filtered seeded sampling
    (top-k, then top-p, then min-p, then temperature, then one uniform draw)."""
    if cfg.greedy:
        return lambda logits, rng, top: int(np.argmax(logits))
    if cfg.top_k <= 0 and cfg.top_p >= 1.0 and cfg.min_p <= 0.0:
        return lambda logits, rng, top: draw_full(logits, cfg.temperature, float(rng.random()))

    def sample(logits: Logits, rng: np.random.Generator, top: float) -> int:
        idx, total = candidates(logits, cfg, top)
        vals = logits[idx].tolist()
        first = vals[0]
        weights = [math.exp(v - first) for v in vals]
        if total is not None:
            total *= math.exp(top - first)  # same scale as weights (first == top)
        keep = min(top_p_keep(weights, cfg.top_p, total), min_p_keep(weights, cfg.min_p))
        return int(idx[draw(vals[:keep], cfg.temperature, float(rng.random()))])

    return sample


# (logits row, counts of the sample's tokens so far) -> the row the sampler draws from
Adjuster = Callable[[Logits, Mapping[int, int]], Logits]


def apply_logit_bias(row: Logits, ids: npt.NDArray[np.int64], bias: npt.NDArray[np.float32]) -> Logits:
    """A copy of ``row`` with ``bias[i]`` added to logit ``ids[i]`` (OpenAI's ``logit_bias``;
    -100 bans a token in effect, as there)."""
    out = np.array(row, dtype=np.float32)
    out[ids] += bias
    return out


def apply_penalties(row: Logits, counts: Mapping[int, int], frequency: float, presence: float) -> Logits:
    """``row`` with OpenAI's penalties: ``logit[j] -= c[j] * frequency + (c[j] > 0) * presence``
    for the tokens ``j`` counted ``c[j]`` times. Changes ``row`` in place (a caller's copy)."""
    if counts:
        ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        c = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        row[ids] -= c * np.float32(frequency) + (c > 0) * np.float32(presence)
    return row


def make_adjuster(cfg: SamplingConfig) -> Adjuster | None:
    """The row adjustments ``cfg`` asks for, composed (bias, then penalties); None when none.
    The adjusted row is always a new array: the model's row may be another sample's too."""
    if not cfg.adjusts:
        return None
    ids = np.array([t for t, _ in cfg.logit_bias], dtype=np.int64)
    bias = np.array([b for _, b in cfg.logit_bias], dtype=np.float32)
    frequency, presence = cfg.frequency_penalty, cfg.presence_penalty
    penalised = frequency != 0.0 or presence != 0.0

    def adjust(row: Logits, counts: Mapping[int, int]) -> Logits:
        out = apply_logit_bias(row, ids, bias)
        return apply_penalties(out, counts, frequency, presence) if penalised else out

    return adjust


def top_logprobs(row: Logits, lse: float, n: int, top: float) -> tuple[tuple[int, float], ...]:
    """The ``n`` most likely tokens of a row and their log-probabilities (temperature 1),
    most likely first (OpenAI's ``top_logprobs``); ``lse``/``top``: the row's logsumexp and max."""
    idx = top_k_candidates(row, n, top)
    return tuple((int(t), float(row[t]) - lse) for t in idx[:n])


def sequence_rng(seed: int) -> np.random.Generator:
    """The RNG of one sequence. Sequence i of a k-batch uses seed + i, so it draws
    exactly what a single-sequence run with that seed draws."""
    return np.random.default_rng(seed)
