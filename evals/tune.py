"""`edgescale tune`: fit `auto`'s policy for one model and task from labelled questions.

The fit follows compute-optimal test-time scaling (Snell et al. 2024) with
stage 1's certainty as the difficulty bin:

1. run ``auto``'s stage 1 alone (one greedy early-exit sample) on every
   question, and every candidate escalation (adaptive sampling or ``conf@k``
   specs) on its own, through the bench engine (a resumable store);
2. for every candidate and every certainty threshold, replay the policy "keep
   stage 1's answer when it has one and its probes agreed or its certainty is
   at least the threshold; else take the candidate's answer": its accuracy, and
   its tokens (stage 1's plus the candidate's when it escalates);
3. choose the candidate by cross-validation (``FOLDS`` folds, question i in fold i mod 5):
   for each candidate, fit the threshold on four folds and score it on the fifth; the
   candidate with the most held-out right answers (fewer tokens on a tie) is chosen and
   its held-out accuracy and tokens are reported (``tune`` prints them: what ``bench
   --policy`` should find on a report split). Then, for that candidate on all the
   questions, choose the cheapest policy within noise of the most accurate one (one standard
   error of the paired difference on these questions: the square root of the
   questions one gets right and the other wrong; at least 1% of them); and
   stage 1 alone (never escalate) unless escalating gets more questions right
   than noise and at least ``min_gain``: a tuned ``auto`` is never worse than
   its stage 1 by more than noise.

The replay counts the candidate as if run alone. In ``auto`` either escalation also
counts stage 1's sample as one vote (adaptive by count, ``conf@k`` by its trace score), and
its samples' seeds differ (they are samples 1..k of the query), so the real policy is not
exactly the replayed one: the cross-validated figure ``tune`` prints is what ``bench
--policy TASK`` on other questions (``--offset ...``) checks, gap included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from edgescale.errors import UsageError
from edgescale.evals.bench import (
    BenchConfig,
    BenchProgress,
    BenchRun,
    BenchStrategy,
    load_items,
    parse_strategies,
    run_bench,
)
from edgescale.strategies.policy import AutoPolicy
from edgescale.strategies.spec import Adaptive, Auto, Confidence, Escalation, check_name

STAGE1_ONLY = AutoPolicy(task="stage-1", confidence=1.0, escalation=None)
DEFAULT_CANDIDATES = ("adaptive:max=8", "conf@8:online=1,temp=0.4")
MIN_GAIN = 2  # questions escalation must win over stage 1 alone
FOLDS = 5  # cross-validation folds
TOLERANCE = 0.01  # the least noise margin, as a share of the questions


@dataclass(frozen=True)
class Option:
    """One replayed policy."""

    escalation: str | None  # candidate label, None: stage 1 alone
    threshold: float  # stage 1's answer stands at certainty >= this
    correct: int
    tokens: float  # per question
    escalated: int  # questions that escalate
    hits: tuple[bool, ...] = field(default=(), repr=False, compare=False)  # right or wrong, per question

    def accuracy(self, n: int) -> float:
        return self.correct / n


@dataclass(frozen=True)
class Fit:
    n: int
    stage1: Option
    best: Option  # the most accurate
    chosen: Option
    options: tuple[Option, ...]


@dataclass(frozen=True)
class _Stage1:
    correct: bool
    tokens: int
    answered: bool
    agreed: bool
    certainty: float | None


def _stage1(record: dict[str, Any]) -> _Stage1:
    result = record["result"]
    plan = result.get("plan") or {}
    return _Stage1(bool(record["correct"]), int(result["stats"]["total_tokens"]), record["answer"] is not None,
                   result.get("stop_reason") == "probes-agreed", plan.get("stage1_certainty"))


def _stands(s: _Stage1, threshold: float) -> bool:
    return s.answered and (s.agreed or (s.certainty is not None and s.certainty >= threshold))


def _replay(first: Sequence[_Stage1], records: Sequence[dict[str, Any]] | None, t: float) -> tuple[tuple[bool, ...],
                                                                                                  list[float], int]:
    """A policy's hits and tokens per question: stage 1's answer where it stands at threshold ``t``,
    else the candidate's (``records``; None: stage 1 alone)."""
    if records is None:
        return tuple(s.correct for s in first), [float(s.tokens) for s in first], 0
    esc = [not _stands(s, t) for s in first]
    hits = tuple((bool(r["correct"]) if e else s.correct) for s, r, e in zip(first, records, esc))
    tokens = [float(s.tokens + (int(r["result"]["stats"]["total_tokens"]) if e else 0))
              for s, r, e in zip(first, records, esc)]
    return hits, tokens, sum(esc)


def fit_policy(stage1: Sequence[dict[str, Any]], candidates: dict[str, Sequence[dict[str, Any]]],
               min_gain: int = MIN_GAIN) -> Fit:
    """Replay every (candidate, threshold) policy on the records (all in the same question order)."""
    first = [_stage1(r) for r in stage1]
    n = len(first)
    if n == 0:
        raise UsageError("tune needs at least one question")
    for label, records in candidates.items():
        if [r["item_id"] for r in records] != [r["item_id"] for r in stage1]:
            raise UsageError(f"tune: the records of {label} are not for the same questions as stage 1's")
    certainties = sorted({s.certainty for s in first if s.certainty is not None})
    thresholds = sorted({0.0, 1.0 + 1e-9, *certainties, *[c + 1e-9 for c in certainties]})
    hits0, tokens0, _ = _replay(first, None, 0.0)
    alone = Option(None, 0.0, sum(hits0), sum(tokens0) / n, 0, hits0)
    options = [alone]
    for label, records in candidates.items():
        for t in thresholds:
            hits, tokens, escalated = _replay(first, records, t)
            options.append(Option(label, t, sum(hits), sum(tokens) / n, escalated, hits))
    best = max(options, key=lambda o: (o.correct, -o.tokens))
    near = [o for o in options if best.correct - o.correct <= _noise(o, best, n)]
    chosen = min(near, key=lambda o: (o.tokens, -o.correct))
    if chosen.escalation is not None and chosen.correct - alone.correct < max(min_gain, _noise(chosen, alone, n)):
        chosen = alone
    return Fit(n, alone, best, chosen, tuple(options))


@dataclass(frozen=True)
class HeldOut:
    """Cross-validation of one candidate's fit: its threshold (and whether to escalate at all)
    fitted on all folds but one, scored on that one, for every fold."""

    candidate: str
    folds: int
    correct: int  # held-out right answers, over all folds
    n: int
    tokens: float  # held-out tokens per question
    fold_accuracy: tuple[float, ...]

    @property
    def accuracy(self) -> float:
        return self.correct / self.n


def cross_validate(stage1: Sequence[dict[str, Any]], label: str, records: Sequence[dict[str, Any]], *,
                   folds: int = FOLDS, min_gain: int = MIN_GAIN) -> HeldOut:
    """``folds``-fold cross-validation of fitting ``label``'s policy (question i is in fold i mod folds)."""
    n = len(stage1)
    folds = max(2, min(folds, n))
    first = [_stage1(r) for r in stage1]
    correct, tokens, per_fold = 0, 0.0, []
    for f in range(folds):
        train = [i for i in range(n) if i % folds != f]
        test = [i for i in range(n) if i % folds == f]
        fit = fit_policy([stage1[i] for i in train], {label: [records[i] for i in train]}, min_gain)
        c = fit.chosen
        hits, toks, _ = _replay([first[i] for i in test], None if c.escalation is None else
                                [records[i] for i in test], c.threshold)
        correct += sum(hits)
        tokens += sum(toks)
        per_fold.append(sum(hits) / len(test))
    return HeldOut(label, folds, correct, n, tokens / n, tuple(per_fold))


def _noise(a: Option, b: Option, n: int) -> float:
    """What two policies' counts of right answers may differ by on these questions and still
    be the same policy within noise: one standard error of the paired difference (the square
    root of the questions one gets right and the other wrong), and at least 1% of them."""
    discordant = sum(x != y for x, y in zip(a.hits, b.hits))
    return max(TOLERANCE * n, math.sqrt(discordant))


def policy_of(fit: Fit, task: str, model: str, specs: dict[str, Escalation], about: dict[str, Any]) -> AutoPolicy:
    c = fit.chosen
    escalation = specs[c.escalation] if c.escalation is not None else None
    confidence = min(1.0, c.threshold) if escalation is not None else 1.0
    fitted = {
        **about, "questions": fit.n,
        "stage1": {"accuracy": fit.stage1.accuracy(fit.n), "tokens": fit.stage1.tokens},
        "chosen": {"accuracy": c.accuracy(fit.n), "tokens": c.tokens, "escalated": c.escalated},
        "best": {"escalation": fit.best.escalation, "threshold": fit.best.threshold,
                 "accuracy": fit.best.accuracy(fit.n), "tokens": fit.best.tokens},
    }
    return AutoPolicy(task=task, confidence=confidence, escalation=escalation, model=model, fitted=fitted)


@dataclass(frozen=True)
class TuneResult:
    policy: AutoPolicy
    fit: Fit  # the chosen candidate's fit on all the questions
    stage1: BenchRun
    candidates: BenchRun
    held_out: tuple[HeldOut, ...] = ()  # every candidate's cross-validation, the chosen one first


def tune(config: BenchConfig, task: str, candidates: Sequence[str] = DEFAULT_CANDIDATES, *,
         min_gain: int = MIN_GAIN, on_progress: Callable[[BenchProgress], None] | None = None) -> TuneResult:
    """Run stage 1 and the candidates on ``config``'s questions; fit and return the policy (not saved)."""
    from edgescale.api import Runtime

    check_name(task)
    parsed = parse_strategies(",".join(candidates))
    specs: dict[str, Escalation] = {}
    for c in parsed:
        if not isinstance(c.strategy, (Adaptive, Confidence)):
            raise UsageError(f"tune candidates are adaptive or conf@k specs (what auto escalates to), got {c.label!r}")
        specs[c.label] = c.strategy
    items = load_items(config)
    with Runtime.load(config.model, backend=config.backend, threads=config.threads, kv_type=config.kv_type) as rt:
        rt.use_policy(STAGE1_ONLY)  # plain auto runs stage 1 alone, and its records say so
        stage1 = BenchStrategy("auto", f"auto:policy={STAGE1_ONLY.id()}", strategy=Auto())
        first = run_bench(replace(config, strategies=(stage1,), policy=None), items=items, runtime=rt,
                          on_progress=on_progress)
        rt.use_policy(None)
        rest = run_bench(replace(config, strategies=parsed, policy=None), items=items, runtime=rt,
                         on_progress=on_progress)
        model = rt.engine.info.path.name
    s1 = first.records["auto"]
    held = sorted((cross_validate(s1, label, rest.records[label], min_gain=min_gain) for label in specs),
                  key=lambda h: (-h.correct, h.tokens))
    pick = held[0]
    fit = fit_policy(s1, {pick.candidate: rest.records[pick.candidate]}, min_gain)
    about = {"dataset": config.dataset, "offset": config.offset, "max_tokens": config.max_tokens,
             "prompt_style": config.prompt_style, "deadline_s": config.deadline_s,
             "memory_bytes": config.memory_bytes, "seed": config.seed, "candidates": list(specs),
             "held_out": {"candidate": pick.candidate, "folds": pick.folds, "accuracy": pick.accuracy,
                          "tokens": pick.tokens, "fold_accuracy": list(pick.fold_accuracy)}}
    return TuneResult(policy_of(fit, task, model, specs, about), fit, first, rest, tuple(held))
