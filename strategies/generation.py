"""How a query's samples are drawn: the options a query asks for, and the generation
settings they make once the plan has chosen the strategy.

:class:`GenerationOptions` is what the scheduler carries for a query (the front
ends' ``edgescale.settings.AskOptions`` extends it with prompt formatting and
answer options). The temperature rule lives here because it is the strategy's: an
explicit temperature holds for every strategy; else the spec's own (``maj@8:temp=0.5``);
else greedy for one sample and ``MULTI_SAMPLE_TEMPERATURE`` for several.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgescale import limits
from edgescale.runtime.constraints import AnswerTail, Constraint
from edgescale.runtime.generate import GenerationConfig
from edgescale.runtime.sampling import SamplingConfig
from edgescale.strategies.spec import Escalate, Single, Strategy, confidence_of, draws_one_sample, spec_temperature


@dataclass(frozen=True)
class GenerationOptions:
    """Per-query sampling options (validated by ``edgescale.settings``)."""

    max_tokens: int = limits.DEFAULT_MAX_TOKENS
    temperature: float | None = None  # None: greedy for one sample, MULTI_SAMPLE_TEMPERATURE otherwise
    top_k: int = limits.DEFAULT_TOP_K
    top_p: float = limits.DEFAULT_TOP_P
    min_p: float = limits.DEFAULT_MIN_P
    seed: int = limits.DEFAULT_SEED
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # samples run to max_tokens (or a stop string): load tests, benchmarks
    constraint: Constraint | None = None  # every sample's whole output matches it (structured output)
    tail: AnswerTail | None = None  # free reasoning, then a constrained answer (--answer number:tail)
    # OpenAI's penalties over each sample's own tokens so far, and (token id, bias) pairs added to logits
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    top_logprobs: int = 0  # keep each step's top (token, log-probability) pairs per sample (0: none)
    logprobs: bool = False  # each sample's tokens and log-probabilities in the result (OpenAI's logprobs)

    def sampling_for(self, strategy: Strategy) -> SamplingConfig:
        temp = self.temperature  # --temperature, when given, holds for every strategy
        if temp is None:
            temp = spec_temperature(strategy)  # the spec's own: maj@8:temp=0.5
        if temp is None:  # one sample: greedy; several: they must differ
            temp = 0.0 if draws_one_sample(strategy) else limits.MULTI_SAMPLE_TEMPERATURE
        return SamplingConfig(temperature=temp, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                              frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
                              logit_bias=self.logit_bias)


def generation_config(strategy: Strategy, options: GenerationOptions, max_new_tokens: int) -> GenerationConfig:
    """The samples' settings for the planned strategy: auto's first sample is greedy (unless
    a temperature is given), its escalation's samples are drawn at the multi-sample temperature."""
    overrides: tuple[tuple[int, SamplingConfig], ...] = ()
    sampling = options.sampling_for(strategy)
    if isinstance(strategy, Escalate):
        overrides = ((0, options.sampling_for(Single())),)
    conf = confidence_of(strategy)
    return GenerationConfig(max_new_tokens=max_new_tokens, stop=options.stop, sampling=sampling, seed=options.seed,
                            ignore_eos=options.ignore_eos, sampling_overrides=overrides,
                            confidence_top_k=conf.topk if conf is not None else 0, constraint=options.constraint,
                            tail=options.tail, top_logprobs=options.top_logprobs,
                            logprobs=options.logprobs or options.top_logprobs > 0)
