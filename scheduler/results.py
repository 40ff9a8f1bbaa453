"""A finished query as a :class:`~edgescale.strategies.result.Result`: every sample, the
probes, the decision and the stats."""

from __future__ import annotations

from edgescale.answers.structured import schema_errors
from edgescale.runtime.engine import Engine
from edgescale.runtime.generate import BatchGenerator, GenerationStats
from edgescale.runtime.memory import peak_rss_bytes
from edgescale.runtime.token_logprobs import token_logprobs
from edgescale.scheduler.query import Query
from edgescale.strategies.base import AnswerBook, Controller, Decision, answer_logprob, mean_logprob
from edgescale.strategies.confidence import trace_score
from edgescale.strategies.result import ProbeRecord, Result, Sample, Stats
from edgescale.strategies.spec import Confidence, confidence_of


def _samples(gen: BatchGenerator, book: AnswerBook, window: int) -> tuple[Sample, ...]:
    out = []
    for st in gen.states:
        if st.started_at is None:
            continue
        out.append(
            Sample(
                index=st.index,
                seed=st.seed,
                text=st.text,
                n_tokens=len(st.tokens),
                finish_reason=st.finish_reason or "cancelled",
                answer=book.value(st),
                answer_source=book.source(st),
                mean_logprob=mean_logprob(st),
                answer_logprob=answer_logprob(st, book),
                finished_at_s=st.finished_at,
                confidence=trace_score(st, window),
                valid=st.valid,
                logprobs=(token_logprobs(gen.engine, st.tokens, st.logprobs, st.top_logprobs)
                          if gen.config.logprobs else None),
            )
        )
    return tuple(out)


def build_result(
    engine: Engine,
    query: Query,
    gen: BatchGenerator,
    ctl: Controller,
    book: AnswerBook,
    decision: Decision,
    rule: str,
    forced: list[ProbeRecord],
    wall_s: float,
    queue_s: float = 0.0,
) -> Result:
    conf = confidence_of(query.strategy)
    samples = _samples(gen, book, (conf or Confidence()).window)
    probes = tuple(ctl.records) + tuple(forced)
    cut = ("cancelled", "deadline", "early-exit")
    stats = Stats(
        prompt_tokens=len(query.prompt_tokens),
        generated_tokens=gen.generated_tokens,
        probe_tokens=gen.stats.probe_tokens,
        decode_steps=gen.stats.decode_steps,
        wall_s=wall_s,
        prefill_s=gen.stats.prefill_s,
        ttft_s=gen.stats.first_token_s,
        peak_kv_bytes=gen.kv_bytes_peak(),
        kv_bytes_allocated=gen.session.kv_bytes_allocated(),
        peak_rss_bytes=peak_rss_bytes(),
        threads=engine.n_threads,
        backend=engine.backend_name,
        samples_started=len(samples),
        cancelled_tokens=sum(s.n_tokens for s in samples if s.finish_reason in cut),
        cached_prompt_tokens=gen.stats.cached_prompt_tokens,
        queue_s=queue_s,
        mask_s=gen.mask_seconds,
    )
    winner = decision.winner
    text = gen.states[winner].text if winner is not None else ""
    if query.answer_kind == "json" and decision.answer is not None and (
            winner is None or book.value(gen.states[winner]) != decision.answer):
        text = decision.answer  # a per-field vote assembled an object no sample wrote whole
    outcome = ctl.outcome
    return Result(
        answer=decision.answer,
        text=text,
        winner=winner,
        strategy=query.strategy.spec(),
        stop_reason=f"{outcome.name}:{rule}" if outcome is not None else rule,
        votes=decision.votes,
        samples=samples,
        probes=probes,
        stats=stats,
        model=query.model_name,
        answer_kind=query.answer_kind,
        plan=query.plan,
        outcome=outcome,
        skipped=decision.skipped,
        valid=output_valid(gen, winner, decision.answer),
    )


def output_valid(gen: BatchGenerator, winner: int | None, answer: str | None) -> bool | None:
    """Under an output constraint: the winner's text is a complete match, and JSON output (the
    answer: the winner's, or the per-field vote's) is an instance of its schema, checked
    again here (jsonschema) before anyone prints it. None: no constraint."""
    constraint = gen.config.constraint
    if constraint is None:
        return None
    if winner is None or not gen.states[winner].valid:
        return False
    schema = constraint.schema
    return schema is None or answer is None or schema_errors(answer, schema) is None


def empty_result(engine: Engine, query: Query, wall_s: float, gen_stats: GenerationStats | None = None,
                 *, rule: str = "deadline", queue_s: float = 0.0) -> Result:
    """The query ended (its deadline, or its client left) before its prompt was read."""
    stats = Stats(
        prompt_tokens=len(query.prompt_tokens), generated_tokens=0, probe_tokens=0, decode_steps=0,
        wall_s=wall_s, prefill_s=wall_s, ttft_s=None, peak_kv_bytes=0, kv_bytes_allocated=0,
        peak_rss_bytes=peak_rss_bytes(), threads=engine.n_threads, backend=engine.backend_name,
        cached_prompt_tokens=gen_stats.cached_prompt_tokens if gen_stats is not None else 0, queue_s=queue_s,
    )
    return Result(
        answer=None, text="", winner=None, strategy=query.strategy.spec(), stop_reason=rule,
        votes={}, samples=(), probes=(), stats=stats, model=query.model_name,
        answer_kind=query.answer_kind, plan=query.plan,
    )
