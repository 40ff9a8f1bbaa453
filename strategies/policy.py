"""`auto`'s policy: when stage 1's answer stands, and what runs when it does not.

``auto`` answers with one greedy early-exit sample first (stage 1) and reads
how certain that answer is (its tokens' geometric-mean probability). A policy
says, for one model and one task:

- ``confidence``: the certainty at or above which stage 1's answer stands
  (probes that agreed also make it stand); below it the query escalates;
- ``escalation``: what then runs in the same batch (an adaptive sampling spec, or
  DeepConf's ``conf@k``), or None when sampling does not pay on this task (stage 1
  alone).

``edgescale tune`` fits one from labelled questions (:mod:`edgescale.evals.tune`)
and saves it next to the device profiles, keyed by the model file and a task
name; ``--policy NAME`` (or ``EDGESCALE_POLICY``) makes ``auto`` use it. Without
one, ``auto`` uses :data:`DEFAULT_POLICY` and says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgescale.errors import UsageError
from edgescale.strategies.spec import Adaptive, Confidence, Escalation, check_name, parse_strategy

AUTO_MAX_SAMPLES = 8  # the default policy's escalation samples at most this many


@dataclass(frozen=True)
class AutoPolicy:
    task: str
    confidence: float
    escalation: Escalation | None
    model: str = ""  # the model file it was fitted for ("" for the default)
    fitted: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # how, and the figures

    def id(self) -> str:
        """Names what the policy decides (not how it was fitted): part of bench record keys."""
        what = f"{self.confidence:g}|{self.escalation.spec() if self.escalation else 'none'}"
        return f"{self.task}-{hashlib.sha256(what.encode()).hexdigest()[:8]}"

    def describe(self) -> str:
        esc = self.escalation.spec() if self.escalation is not None else "none (stage 1 alone)"
        return f"policy {self.task!r}: stage 1's answer stands at certainty >= {self.confidence:g}; else {esc}"

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "model": self.model, "confidence": self.confidence,
                "escalation": self.escalation.spec() if self.escalation is not None else None,
                "fitted": self.fitted}


# The default, fitted by `EDGESCALE_THREADS=2 edgescale tune --task arith1d --dataset arith-1d --offset 100
# --limit 100 --prompt-style bare --max-tokens 48 --seed 0 --candidates "adaptive:max=8,conf@8:online=1,temp=0.4"`
# on SmolLM2-135M Q4_1 (the packaged model and the packaged question generator; docs/BENCHMARKS.md):
# stage 1 alone 39%, 25.6 tokens a question; escalating below certainty 0.952 to DeepConf online at
# temperature 0.4 59%, 130.2 tokens (72 of 100 escalate); always escalating to it 62%, 179.9; to the
# adaptive default 55%, 141.1. (Before it: certainty 0.533, then adaptive at the old 0.95/waves of 4/T 0.8;
# before that, set by hand: certainty 0.8, then adaptive:max=16.)
# The escalation gives up after its warm-up when its answers all differ; auto then answers with
# stage 1's greedy answer (issue 28, docs/BENCHMARKS.md: on 100 arith-1d questions giving up at
# 3 of 4 different cost 7 points [1.3, 12.7] against never). Stage 1's sample votes in the
# escalation (+4 points on arith-1d, +1 to +2 on counting, replayed), which lets the warm-up
# shrink to 2: replayed on the stored full escalations, 49% at 0.39x maj@8's tokens on
# arith-1d and 12% at 0.33x on object counting, against 52% at 0.71x and 13% at 0.64x with a
# warm-up of 4 (bench/escalation_replay.py). Measured on the report splits: 49% at 0.42x on arith-1d,
# 11% at 0.34x on counting, 22% at 0.30x on arith-3; Gemma 3 270M 53% at 0.18x on arith-1d (BENCHMARKS).
DEFAULT_POLICY = AutoPolicy(
    task="default", confidence=0.952,
    escalation=Confidence(k=AUTO_MAX_SAMPLES, online=True, warmup=2, temp=0.4, give_up=1.0),
    fitted={"source": "the default: fitted on 100 packaged arith-1d questions (offset 100) for SmolLM2-135M"},
)


def policy_from_dict(data: dict[str, Any]) -> AutoPolicy:
    try:
        esc = data.get("escalation")
        escalation = parse_strategy(esc) if esc else None
        if escalation is not None and not isinstance(escalation, (Adaptive, Confidence)):
            raise ValueError(f"escalation must be an adaptive or conf@k spec, got {esc!r}")
        return AutoPolicy(task=str(data["task"]), confidence=float(data["confidence"]), escalation=escalation,
                          model=str(data.get("model", "")), fitted=dict(data.get("fitted") or {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"bad policy file: {exc}") from None


def policy_path(model_file: str, task: str) -> Path:
    """``$XDG_CACHE_HOME/edgescale/policies/<model file>/<task>.json`` (next to ``profiles/``)."""
    from edgescale.models.catalog import cache_dir

    return cache_dir() / "policies" / model_file / f"{check_name(task)}.json"


def save_policy(policy: AutoPolicy) -> Path:
    path = policy_path(policy.model, policy.task)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(policy.to_dict(), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def load_policy(model_file: str, task: str) -> AutoPolicy:
    """The policy tuned for this model file and task; one line naming ``edgescale tune`` if none."""
    path = policy_path(model_file, task)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no policy {task!r} for {model_file}; fit one with `edgescale tune --task {task} "
                         "--dataset ...`") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read policy {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"bad policy file {path}")
    return policy_from_dict(data)
