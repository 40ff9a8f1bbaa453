"""The settings docs/BENCHMARKS.md documents, per (model, dataset), chosen by measurement.

Why these (details and the measurements in docs/BENCHMARKS.md):

* SmolLM2-135M-Instruct is chat-tuned: zero-shot prompts through its chat template.
* Gemma 3 270M (this GGUF) is the *base* model and has no chat template: raw
  few-shot prompts (3 examples, ending in an ``Answer:`` cue, generation
  stopping at the next ``Question:``). On 10 questions per dataset (greedy),
  they answered in the expected form and needed far fewer tokens than zero-shot
  prompts, which ramble to the token cap (GSM8K 39 vs 145-160 tokens, ARC-Easy 9
  vs 32), at accuracy that was the same within noise (ARC-Easy 3/10 vs 3-4/10,
  BoolQ 7/10 vs 4-5/10, GSM8K 0/10 vs 1/10).
* Token caps: the answer is a letter (ARC) or yes/no (BoolQ), a handful of
  tokens; GSM8K needs reasoning, capped at 96 tokens.
* Gemma on BoolQ uses one example, not three: every example carries a whole
  passage, and three of them made each query's prompt about four times longer
  (about 60 s per question for the strategy set on this machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgescale.errors import UsageError


@dataclass(frozen=True)
class Profile:
    max_tokens: int
    prompt_style: str = "zero-shot"
    raw: bool = False
    shots: int | None = None

    def options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`edgescale.evals.bench.BenchConfig`."""
        return {"max_tokens": self.max_tokens, "prompt_style": self.prompt_style, "raw": self.raw,
                "shots": self.shots}

    def flags(self) -> str:
        """The same settings as ``edgescale bench`` options."""
        out = f"--max-tokens {self.max_tokens} --prompt-style {self.prompt_style}"
        if self.shots is not None:
            out += f" --shots {self.shots}"
        return out + (" --raw" if self.raw else "")


_MAX_TOKENS = {"gsm8k": 96, "arc-easy": 16, "boolq": 8}


def profile_for(model: str, dataset: str) -> Profile:
    if dataset not in _MAX_TOKENS:
        raise UsageError(f"no documented settings for {dataset!r}; known: {', '.join(_MAX_TOKENS)}")
    cap = _MAX_TOKENS[dataset]
    if model.startswith("gemma3"):
        return Profile(max_tokens=cap, prompt_style="few-shot", raw=True, shots=1 if dataset == "boolq" else 3)
    if model.startswith("smollm2"):
        return Profile(max_tokens=cap)
    raise UsageError(f"no documented settings for model {model!r}; known: smollm2-135m, gemma3-270m")

