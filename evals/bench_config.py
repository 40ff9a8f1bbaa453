"""What one ``edgescale bench`` run asks for: its strategies (:class:`BenchStrategy`), its
settings (:class:`BenchConfig`: the ones that shape a record are part of its key) and the
prompt a question becomes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgescale import limits
from edgescale.answers.structured import TAIL_KINDS, answer_tail
from edgescale.errors import UsageError
from edgescale.evals import datasets
from edgescale.evals.baseline import BaselineSpec, parse_baseline
from edgescale.evals.datasets import Item
from edgescale.runtime.constraints import Constraint
from edgescale.settings import AskOptions
from edgescale.strategies.spec import Strategy, parse_strategy

PROMPT_FORMAT = 1  # bump when bench_prompt changes what the model sees (part of the settings id)
# bump when answer extraction or a strategy's rule changes what a record would say (2: numbers
# in words; ffs / short-m@k count only answered finishers by default; 3: a text ending on an
# unresolved equation, "1 + 4 = N", has no number answer; 4: auto's DeepConf escalation counts
# stage 1's sample as a vote, which a policy's id, hashing only its threshold and spec, misses)
ANSWER_RULES = 4
RAW_CUE = "\nAnswer:"
RAW_STOP = "\nQuestion:"


@dataclass(frozen=True)
class BenchStrategy:
    """One row of the table: an edgescale strategy or the llama-cpp-python baseline."""

    label: str  # as the user wrote it ("adaptive")
    spec: str  # canonical ("adaptive:max=16,conf=0.95,...") - part of the record key
    strategy: Strategy | None = None
    baseline: BaselineSpec | None = None


def parse_strategies(text: str, default_k: int = 8) -> tuple[BenchStrategy, ...]:
    """``"single,maj@8,baseline@8"`` -> strategies; InvalidSpec / UsageError on a bad one.

    Commas inside ``adaptive:max=8,conf=0.9`` belong to the spec: a part that
    is ``key=value`` is glued to the part before it.
    """
    parts: list[str] = []
    for raw in text.split(","):
        piece = raw.strip()
        if parts and "=" in piece and ":" not in piece and "@" not in piece:
            parts[-1] = f"{parts[-1]},{piece}"
        elif piece:
            parts.append(piece)
    if not parts:
        raise UsageError("--strategies is empty; give e.g. single,maj@8,ffs@8")
    out: list[BenchStrategy] = []
    for part in parts:
        base = parse_baseline(part, default_k)
        if base is not None:
            out.append(BenchStrategy(part, base.spec(), baseline=base))
            continue
        strategy = parse_strategy(part, default_k=default_k)
        out.append(BenchStrategy(part, strategy.spec(), strategy=strategy))
    specs = [s.spec for s in out]
    dupes = sorted({s for s in specs if specs.count(s) > 1})
    if dupes:
        raise UsageError(f"--strategies names {', '.join(dupes)} more than once")
    return tuple(out)


@dataclass(frozen=True)
class BenchConfig:
    dataset: str
    strategies: tuple[BenchStrategy, ...]
    limit: int | None = 200
    offset: int = 0
    model: str | None = None
    backend: str = "llama.cpp"
    threads: int | None = None
    max_tokens: int = limits.DEFAULT_MAX_TOKENS
    seed: int = limits.DEFAULT_SEED
    prompt_style: str = "zero-shot"
    shots: int | None = None  # few-shot examples per prompt; None = all the dataset has
    raw: bool = False
    stop: tuple[str, ...] = ()
    deadline_s: float | None = None
    memory_bytes: int | None = None
    out: Path | None = None
    parallel: int = 1  # strategies of one question decoding together in the shared loop
    policy: str | None = None  # auto's tuned policy (task name) for plain `auto`; None: the default
    kv_layout: str = "auto"  # the shared loop's KV layout (strategies.planner.kv_layout_for)
    deterministic: bool = False  # exact KV streams: a query's tokens do not depend on the others
    kv_type: str = limits.DEFAULT_KV_TYPE  # the shared cache's element types (or auto)
    # "tail": samples reason freely, then decode their answer under the item kind's grammar
    # (runtime.constraints.AnswerTail); items of other kinds stay free
    answer_mode: str = "free"
    constraint: Constraint | None = None  # every sample's output matches it (--json-schema, ...)
    frequency_penalty: float = 0.0  # OpenAI's penalties and logit bias (runtime.sampling.make_adjuster)
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    top_logprobs: int = 0  # (sampling_extras' fields; a bench keeps none)
    logprobs: bool = False

    def settings(self) -> dict[str, Any]:
        """Everything besides dataset, item, strategy, model and seed that shapes the output."""
        defaults = AskOptions()
        return {
            "max_tokens": self.max_tokens, "prompt_style": self.prompt_style, "shots": self.shots,
            "raw": self.raw, "stop": list(self.stop_strings()), "deadline_s": self.deadline_s,
            "memory_bytes": self.memory_bytes, "backend": self.backend, "prompt_format": PROMPT_FORMAT,
            "answer_rules": ANSWER_RULES,
            "temperature": limits.MULTI_SAMPLE_TEMPERATURE, "top_k": defaults.top_k, "top_p": defaults.top_p,
            "min_p": defaults.min_p,
            # run together, queries share steps: their logits differ at rounding level from a
            # query run alone (README, Determinism), so such records are kept apart
            **({"parallel": self.parallel} if self.parallel > 1 else {}),
            **({"kv_layout": self.kv_layout} if self.kv_layout != "auto" else {}),
            **({"deterministic": True} if self.deterministic else {}),
            # a lossy cache changes the tokens: such records are kept apart
            **({"kv_type": self.kv_type} if self.kv_type not in ("auto", "f16") else {}),
            # constrained decoding changes the tokens: such records are kept apart
            **({"answer_mode": self.answer_mode} if self.answer_mode != "free" else {}),
            **({"constraint": [self.constraint.kind, self.constraint.source]} if self.constraint else {}),
            # penalties and bias change the tokens: such records are kept apart
            **({"frequency_penalty": self.frequency_penalty} if self.frequency_penalty else {}),
            **({"presence_penalty": self.presence_penalty} if self.presence_penalty else {}),
            **({"logit_bias": [list(p) for p in self.logit_bias]} if self.logit_bias else {}),
        }

    def stop_strings(self) -> tuple[str, ...]:
        extra = (RAW_STOP,) if self.raw and RAW_STOP not in self.stop else ()
        return self.stop + extra

    def options(self, item: Item) -> AskOptions:
        tail = (answer_tail(item.kind, item.choices) if self.answer_mode == "tail" and item.kind in TAIL_KINDS
                else None)
        return AskOptions(
            max_tokens=self.max_tokens, seed=self.seed, stop=self.stop_strings(), chat=not self.raw,
            answer=item.kind, choices=item.choices, constraint=self.constraint, tail=tail,
            frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
            logit_bias=self.logit_bias,
        )

    def check(self) -> None:
        """Settings that cannot go together (one line each)."""
        if self.answer_mode not in ("free", "tail"):
            raise UsageError(f"--answer-mode must be free or tail, got {self.answer_mode!r}")
        if self.answer_mode == "tail" and self.constraint is not None:
            raise UsageError("an answer tail and an output constraint cannot be combined")
        if (self.answer_mode == "tail" or self.constraint is not None) and any(s.baseline for s in self.strategies):
            raise UsageError("the llama-cpp-python baseline decodes free text only: drop it, or the constraint")
        if (self.frequency_penalty or self.presence_penalty or self.logit_bias) and any(
                s.baseline for s in self.strategies):
            raise UsageError("the llama-cpp-python baseline samples without penalties or logit bias: drop it, or them")


def bench_prompt(item: Item, config: BenchConfig) -> str:
    """``prompt_for`` with at most ``shots`` examples; a raw prompt ends with an ``Answer:`` cue
    (the few-shot format a base model continues), and generation stops at the next ``Question:``."""
    if config.shots is not None:
        item = replace(item, fewshot=item.fewshot[: config.shots])
    text = datasets.prompt_for(item, config.prompt_style)  # type: ignore[arg-type]
    return text + RAW_CUE if config.raw else text
