"""One step of the shared loop: which running queries take part, their feeds assembled into one
decode of the shared context, and each query's rows handed back (scheduler.loop owns admission,
eviction and the context; this module owns what a step decodes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edgescale.scheduler.config import SchedulerConfig, SchedulerStats, read_chunk
from edgescale.scheduler.lanes import Lane, SharedContext
from edgescale.scheduler.request import Request
from edgescale.scheduler.runner import QueryRun


@dataclass
class Running:
    request: Request
    run: QueryRun
    lane: Lane
    cells: int
    cached: bool = False  # its prompt went to the prefix cache


def step(running: list[Running], shared: SharedContext, config: SchedulerConfig, stats: SchedulerStats,
         clock: Callable[[], float], cache_prompt: Callable[[Running], None]) -> None:
    """Decode one step for the running queries (the caller retires the finished ones after it)."""
    for r in list(running):
        if r.request.cancelled and not r.run.done:
            r.run.cancel()
    width = max(1, sum(len(r.run.gen.live) if r.run.gen is not None else 0 for r in running))
    # the next step is expected to take as long as the last one did (it read prompts then too
    # if some query is still reading): a deadline that would pass in it is answered now
    reading = any(r.run.gen is not None and r.run.gen.reading_prompt for r in running)
    hint = stats.recent[-1][0] if stats.recent and reading else 0.0
    active = [r for r in running if not r.run.done and r.run.due(width, probes_ahead(running, r), hint)]
    # prompt reading shares a step up to step_prompt_tokens (the oldest readers first), so that
    # a burst of arrivals cannot make one step long (every deadline is checked between steps);
    # while no query has a deadline, readers take bigger chunks (fewer, fuller steps)
    chunk = read_chunk(config, any(r.request.deadline.bounded for r in running))
    room = config.step_prompt_tokens or 2 * chunk
    sitting_out = set()
    for r in active:
        if r.run.gen is not None and r.run.gen.reading_prompt:
            if room <= 0:
                sitting_out.add(id(r))
            r.run.gen.set_chunk(chunk)
            room -= chunk
    active = [r for r in active if id(r) not in sitting_out]
    parts = []
    events_of = {}
    for r in active:
        gen = r.run.gen
        assert gen is not None
        events, feeds = gen.feeds()
        events_of[id(r)] = events
        if feeds:
            parts.append((r, feeds))
    t0 = clock()
    read = decoded = 0
    if parts:
        # with one KV stream per id, live sequences on consecutive ids decode in one pass
        shared.compact([r.lane.ids[seq] for r, feeds in parts for seq, _ in feeds])
        all_feeds = [f for r, feeds in parts for f in r.lane.to_shared(feeds)]
        rows = shared.decode(all_feeds)
        at = 0
        for r, feeds in parts:
            r.lane.fed(feeds)
            reading = r.run.gen.reading_prompt  # type: ignore[union-attr]
            if reading:
                read += sum(len(t) for _, t in feeds)
            else:
                decoded += len(feeds)
            r.run.gen.take(rows[at : at + len(feeds)])  # type: ignore[union-attr]
            at += len(feeds)
            if reading and not r.run.gen.reading_prompt:  # type: ignore[union-attr]
                cache_prompt(r)
    seconds = clock() - t0
    stats.steps += 1
    stats.prompt_tokens_read += read
    stats.tokens += decoded
    stats.recent.append((seconds, read, decoded))
    for r in active:
        if not r.run.done:
            r.run.after(events_of[id(r)], seconds, width)


def probes_ahead(running: list[Running], r: Running) -> int:
    """Other running queries that may run a forced-answer probe before ``r``'s deadline
    (each probe holds the loop for its few tokens, so deadlines due together must
    leave room for all of them)."""
    if not r.request.deadline.bounded:
        return 0
    due = r.request.deadline.due
    return sum(1 for o in running if o is not r and not o.run.done and o.run.may_probe_by(due))
