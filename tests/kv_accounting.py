"""One KV-cell formula: what a query's plan counts is what the scheduler reserves for it
(shared by the llama.cpp and ONNX Runtime tests)."""

from __future__ import annotations

from edgescale.api import Budget, Runtime
from edgescale.runtime.memory import memory_model
from edgescale.scheduler.request import plan_request
from edgescale.scheduler.runner import QueryRun

SPECS = ("single", "maj@4", "early-exit:k=2", "adaptive:max=4,wave=2", "conf@4:online=1", "ffs@3", "auto")


def assert_plan_cells_are_reserved(rt: Runtime) -> None:
    memory = memory_model(rt.engine)
    for spec in SPECS:
        for budget in (None, Budget(deadline_s=60)):
            req = rt.request("What is 2 + 3?", strategy=spec, budget=budget, max_tokens=40)
            query = plan_request(req, memory, others=0, now=req.arrival)
            run = QueryRun(rt.engine, query)
            assert (run.kv_cells, run.n_seq_ids) == (query.plan.n_cells, query.plan.n_seq_ids), (spec, budget)
            assert query.plan.n_cells >= len(req.prompt_tokens) + 40 * run.alloc.n_seqs
    plan = rt.plan("What is 2 + 3?", strategy="maj@3", max_tokens=24)
    reserved: set[int] = set()
    rt.ask("What is 2 + 3?", strategy="maj@3", max_tokens=24,
           on_step=lambda gen, events: reserved.add(rt.scheduler.reserved_cells()))
    assert reserved == {plan.n_cells}
