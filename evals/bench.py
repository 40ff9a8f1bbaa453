"""``edgescale bench``'s engine: run strategies over benchmark questions, interleaved, resumably.

For each question every strategy runs before the next question starts, so
load from other processes hits all strategies alike; the strategy order is
rotated by one per question so that none always runs first (first after the
previous question's last strategy, with its caches) or last. Each finished
query becomes one record (see :mod:`edgescale.evals.store`) holding the full
``Result.to_dict()`` telemetry plus dataset, item id, gold answer, whether
it is correct, model, seed, settings and the query's own peak RSS.

Determinism: answers and token counts depend only on the settings and
``seed`` (sample i of every question uses ``seed + i``); wall times and
memory are measurements.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgescale import limits
from edgescale.api import Budget, Runtime, RuntimeSpec
from edgescale.errors import UsageError
from edgescale.evals import datasets
from edgescale.evals.baseline import BaselineQuery, SequentialBaseline
from edgescale.evals.bench_config import BenchConfig, BenchStrategy, bench_prompt, parse_strategies
from edgescale.evals.datasets import Item
from edgescale.evals.rss import PeakRss, current_peak, reset_peak
from edgescale.evals.store import RecordKey, ResultStore, settings_id
from edgescale.scheduler.config import SchedulerConfig
from edgescale.settings import AskOptions, AskSettings
from edgescale.strategies.result import Result
from edgescale.strategies.spec import Single, samples_of

# BenchConfig, BenchStrategy and parse_strategies live in bench_config; importers find them here too
__all__ = ["BenchConfig", "BenchJob", "BenchProgress", "BenchRun", "BenchSession", "BenchStrategy", "load_items",
           "model_key", "parse_strategies", "question_records", "run_bench"]


def dataset_key(name: str) -> str:
    lowered = name.strip().lower().replace("_", "-")
    if lowered in datasets.dataset_names():
        return lowered
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_file() else lowered


def model_key(model: str | None, backend: str) -> str:
    """The model as records name it: the file (or ONNX folder) name, whatever alias selected it."""
    from edgescale.loader import default_backends

    return default_backends().get(backend).resolve(model).name


@dataclass(frozen=True)
class Tally:
    label: str
    correct: int
    done: int


@dataclass(frozen=True)
class BenchProgress:
    done: int  # queries finished (run now or found in the store)
    total: int
    resumed: int  # of ``done``, found in the store
    question: int  # index of the current question in the run
    tallies: tuple[Tally, ...]


@dataclass(frozen=True)
class BenchRun:
    config: BenchConfig
    model: str
    items: tuple[Item, ...]
    settings: dict[str, Any]
    records: dict[str, tuple[dict[str, Any], ...]]  # strategy label -> records in question order
    ran: int  # queries run now (the rest came from the store)
    threads: tuple[int, ...]  # CPU thread counts the records were made with
    wall_s: float = field(default=0.0)


ProgressCallback = Callable[[BenchProgress], None]


def _record(config: BenchConfig, run: dict[str, Any], item: Item, index: int, strat: BenchStrategy,
            result: Result, rss: tuple[int, bool]) -> dict[str, Any]:
    return {
        **run, "item_id": item.id, "question_index": config.offset + index, "strategy": strat.label,
        "strategy_spec": strat.spec, "kind": item.kind, "gold": item.answer, "answer": result.answer,
        "correct": result.answer is not None and result.answer == item.answer,
        "rss_peak_bytes": rss[0], "rss_per_query": rss[1], "finished_at": time.time(),
        "result": result.to_dict(),
    }


class BenchSession:
    """The loaded runtime and baseline, made on the first query that needs them."""

    def __init__(self, config: BenchConfig, runtime: Runtime | None = None) -> None:
        self.config = config
        self.runtime: Runtime | None = runtime
        self._owns_runtime = runtime is None
        self.baseline: SequentialBaseline | None = None
        self.longest = 0  # longest prompt from the first baseline question on (sizes its context)

    def rt(self) -> Runtime:
        if self.runtime is None:
            lanes = max(1, self.config.parallel)
            # sequences a step will carry (backend auto picks by it): the widest strategies running together
            widest = sorted((samples_of(s.strategy) for s in self.config.strategies if s.strategy is not None),
                            reverse=True)[:lanes]
            spec = RuntimeSpec(self.config.model, backend=self.config.backend, threads=self.config.threads,
                               lanes=lanes, scheduler=SchedulerConfig(memory_bytes=self.config.memory_bytes),
                               width=max(1, sum(widest)),
                               kv_layout=self.config.kv_layout, deterministic=self.config.deterministic,
                               kv_type=self.config.kv_type)
            # auto's cache type is chosen for the widest strategy's query under the budget
            wide = max((s.strategy for s in self.config.strategies if s.strategy is not None), key=samples_of,
                       default=None)
            defaults = AskSettings(wide or Single(), Budget(memory_bytes=self.config.memory_bytes),
                                   AskOptions(max_tokens=self.config.max_tokens))
            self.runtime = Runtime.open(spec, defaults)
        return self.runtime

    def base(self, longest_prompt: int) -> SequentialBaseline:
        if self.baseline is None:
            rt = self.rt()
            if rt.engine.backend_name != "llama.cpp":
                raise UsageError("baseline@k compares against llama-cpp-python; use --backend llama.cpp")
            info = rt.engine.info
            n_ctx = min(info.n_ctx_train, longest_prompt + self.config.max_tokens + 16)
            self.baseline = SequentialBaseline(
                info.path, n_ctx=n_ctx, n_threads=rt.engine.n_threads, kv_bytes_per_cell=info.kv_bytes_per_cell()
            )
        return self.baseline

    def close(self) -> None:
        if self.baseline is not None:
            self.baseline.close()
        if self.runtime is not None and self._owns_runtime:
            self.runtime.close()


def _ask(session: BenchSession, config: BenchConfig, strat: BenchStrategy, tokens: list[int], item: Item,
         longest: int, model: str) -> Result:
    options = config.options(item)
    if strat.baseline is not None:
        query = BaselineQuery(
            prompt_tokens=tokens, k=strat.baseline.k, max_tokens=config.max_tokens, seed=config.seed,
            temperature=limits.MULTI_SAMPLE_TEMPERATURE, top_k=options.top_k, top_p=options.top_p, min_p=options.min_p,
            stop=options.stop, answer_kind=item.kind, choices=item.choices, deadline_s=config.deadline_s,
            model_name=model,
        )
        return session.base(longest).ask(query)
    assert strat.strategy is not None
    budget = Budget(deadline_s=config.deadline_s, memory_bytes=config.memory_bytes)
    return session.rt().ask(bench_prompt(item, config), strategy=strat.strategy, budget=budget, options=options)


def load_items(config: BenchConfig) -> tuple[Item, ...]:
    items = tuple(datasets.load(config.dataset, limit=config.limit, offset=config.offset))
    if not items:
        raise UsageError(f"no questions in {config.dataset!r} at offset {config.offset}")
    counts = Counter(item.id for item in items)
    dupes = sorted(i for i, n in counts.items() if n > 1)
    if dupes:
        raise UsageError(f"{config.dataset}: question ids must be unique; repeated: {', '.join(dupes[:5])}")
    return items


@dataclass(frozen=True)
class BenchJob:
    """What every query of a run shares: its settings, questions and record fields."""

    config: BenchConfig
    items: tuple[Item, ...]
    run_fields: dict[str, Any]  # dataset, model, seed, settings id and settings of every record

    @property
    def model(self) -> str:
        return str(self.run_fields["model"])


Pending = Sequence[tuple[int, Sequence[BenchStrategy]]]  # (question index, strategies still to run)
# runs the pending queries, calling emit(question index, strategy, record) for each new record
Executor = Callable[[BenchJob, Pending, Callable[[int, BenchStrategy, dict[str, Any]], None]], None]


def run_bench(config: BenchConfig, *, on_progress: ProgressCallback | None = None,
              items: Sequence[Item] | None = None, runtime: Runtime | None = None,
              executor: Executor | None = None, model: str | None = None) -> BenchRun:
    """Run (or resume) every strategy on every question; return the records of this selection.

    ``items`` (default: loaded from ``config``) and ``runtime`` (default: loaded
    on the first query that needs it, closed at the end) may be given by the caller;
    a given runtime is used as is and its ``model_name`` keys the records.
    ``executor`` (default: this process, question after question) runs the queries
    the store does not hold yet, e.g. on a Ray cluster (``edgescale.cluster``); then
    ``model`` names the model the records are keyed by.
    """
    t0 = time.perf_counter()
    items = tuple(items) if items is not None else load_items(config)
    if model is None:
        model = runtime.model_name if runtime is not None else model_key(config.model, config.backend)
    config = _with_policies(config, runtime.engine.info.path.name if runtime is not None else model)
    strategies = config.strategies
    settings = config.settings()
    job = BenchJob(config, items, {
        "dataset": dataset_key(config.dataset), "model": model, "seed": config.seed,
        "settings_id": settings_id(settings), "settings": settings,
    })
    store = ResultStore(config.out)
    found: dict[str, list[dict[str, Any]]] = {s.label: [] for s in strategies}
    tallies = {s.label: [0, 0] for s in strategies}
    counts = {"done": 0, "resumed": 0, "ran": 0}
    total = len(items) * len(strategies)

    def account(index: int, strat: BenchStrategy, record: dict[str, Any], resumed: bool) -> None:
        found[strat.label].append(record)
        tallies[strat.label][0] += bool(record["correct"])
        tallies[strat.label][1] += 1
        counts["done"] += 1
        counts["resumed" if resumed else "ran"] += 1
        if on_progress is not None:
            on_progress(BenchProgress(counts["done"], total, counts["resumed"], index, tuple(
                Tally(s.label, *tallies[s.label]) for s in strategies)))

    pending: list[tuple[int, list[BenchStrategy]]] = []
    for i, item in enumerate(items):
        todo = []
        for strat in _rotated(strategies, i):
            record = store.get(record_key_of(job, item, strat))
            if record is None:
                todo.append(strat)
            else:
                account(i, strat, record, True)
        if todo:
            pending.append((i, todo))
    run = executor if executor is not None else _LocalExecutor(runtime)
    run(job, pending, lambda i, strat, record: account(i, strat, store.add(record), False))
    ordered = {s.label: _in_order(found[s.label], items) for s in strategies}
    threads = tuple(sorted({int(r["result"]["stats"]["threads"]) for rs in ordered.values() for r in rs}))
    return BenchRun(config, model, items, settings, ordered, counts["ran"], threads, time.perf_counter() - t0)


def _with_policies(config: BenchConfig, model_file: str) -> BenchConfig:
    """``auto``'s records are keyed by what its policy decides (a tuned one: ``auto:policy=NAME``, or
    plain ``auto`` with ``config.policy``; else the default), so records of another fit are not reused."""
    from edgescale.strategies.policy import DEFAULT_POLICY, load_policy
    from edgescale.strategies.spec import Auto

    out = []
    for s in config.strategies:
        if isinstance(s.strategy, Auto) and (s.strategy.policy or config.policy):
            name = s.strategy.policy or config.policy
            assert name is not None
            policy_id = load_policy(model_file, name).id()
            s = replace(s, spec=f"auto:policy={policy_id}", strategy=Auto(policy=name))
        elif isinstance(s.strategy, Auto) and s.spec == "auto":
            s = replace(s, spec=f"auto:policy={DEFAULT_POLICY.id()}")
        out.append(s)
    return replace(config, strategies=tuple(out))


def _rotated(strategies: Sequence[BenchStrategy], index: int) -> list[BenchStrategy]:
    shift = index % len(strategies)
    return list(strategies[shift:]) + list(strategies[:shift])


def record_key_of(job: BenchJob, item: Item, strat: BenchStrategy) -> RecordKey:
    f = job.run_fields
    return (f["dataset"], item.id, strat.spec, f["model"], job.config.seed, f["settings_id"])


class _LocalExecutor:
    """The queries in this process, question after question, each record kept as it is made."""

    def __init__(self, runtime: Runtime | None) -> None:
        self.runtime = runtime

    def __call__(self, job: BenchJob, pending: Pending,
                 emit: Callable[[int, BenchStrategy, dict[str, Any]], None]) -> None:
        session = BenchSession(job.config, self.runtime)
        try:
            for i, todo in pending:
                for strat, record in question_records(session, job, i, todo):
                    emit(i, strat, record)
        finally:
            session.close()


def question_records(session: BenchSession, job: BenchJob, index: int,
                     todo: Sequence[BenchStrategy]) -> Iterator[tuple[BenchStrategy, dict[str, Any]]]:
    """Run question ``index``'s strategies ``todo`` (in that order); yield each record as it is made."""
    config, item = job.config, job.items[index]
    together = _run_together(session, config, item, [s for s in todo if s.baseline is None])
    tokens: list[int] | None = None
    for strat in todo:
        if strat.label in together:
            result, peak = together[strat.label]
        else:
            if tokens is None and strat.baseline is not None:
                tokens = session.rt().prompt_tokens(bench_prompt(item, config), config.options(item))
                session.longest = max(session.longest, _longest_prompt(session, config, job.items, index))
            was_reset = reset_peak()
            result = _ask(session, config, strat, tokens or [], item, session.longest, job.model)
            peak = current_peak(was_reset)
        yield strat, _record(config, job.run_fields, item, index, strat, result, (peak.bytes, peak.per_query))


def _run_together(session: BenchSession, config: BenchConfig, item: Item,
                  strategies: Sequence[BenchStrategy]) -> dict[str, tuple[Result, PeakRss]]:
    """With ``parallel`` > 1: the question's strategies submitted together (at most
    ``parallel`` at a time) to the shared loop; their RSS peak is the group's, not per query."""
    if config.parallel <= 1 or len(strategies) < 2:
        return {}
    rt = session.rt()
    budget = Budget(deadline_s=config.deadline_s, memory_bytes=config.memory_bytes)
    out: dict[str, tuple[Result, PeakRss]] = {}
    for start in range(0, len(strategies), config.parallel):
        group = strategies[start : start + config.parallel]
        was_reset = reset_peak()
        futures = [rt.submit(bench_prompt(item, config), strategy=s.strategy, budget=budget,
                             options=config.options(item)) for s in group]
        results = [f.result() for f in futures]
        peak = current_peak(was_reset)
        shared = PeakRss(peak.bytes, False)  # a group's peak: not one query's
        for s, res in zip(group, results):
            out[s.label] = (res, shared)
    return out


def _longest_prompt(session: BenchSession, config: BenchConfig, items: Sequence[Item], start: int) -> int:
    """Longest prompt from question ``start`` on: sizes the baseline's context once, when it loads."""
    if session.baseline is not None:
        return 0
    rt = session.rt()
    return max(len(rt.prompt_tokens(bench_prompt(it, config), config.options(it))) for it in items[start:])


def _in_order(records: list[dict[str, Any]], items: Sequence[Item]) -> tuple[dict[str, Any], ...]:
    rank = {item.id: i for i, item in enumerate(items)}
    return tuple(sorted(records, key=lambda r: rank.get(str(r["item_id"]), len(rank))))
