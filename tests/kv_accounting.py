"""One KV-cell formula: what a query's plan counts is what the scheduler reserves for it
(shared by the llama.cpp and ONNX Runtime tests)."""

from __future__ import annotations

from edgescale.api import Budget, Runtime
from edgescale.runtime.memory import memory_model
from edgescale.scheduler.request import plan_request
from edgescale.scheduler.runner import QueryRun
from tests.scheduling import ask

SPECS = ("single", "maj@4", "early-exit:k=2", "adaptive:max=4,wave=2", "conf@4:online=1", "ffs@3", "auto")


def assert_plan_cells_are_reserved(rt: Runtime) -> None:
    layout_name = rt.scheduler_config.kv_layout
    memory = memory_model(rt.engine, layout_name)
    layout = rt.engine.kv_layouts[layout_name] if layout_name is not None else rt.engine.memory_layout
    for spec in SPECS:
        for budget in (None, Budget(deadline_s=60)):
            req = rt.request("What is 2 + 3?", strategy=spec, budget=budget, max_tokens=40)
            query = plan_request(req, memory, others=0, now=req.arrival)
            run = QueryRun(rt.engine, query, layout=layout)
            assert (run.kv_cells, run.n_seq_ids) == (query.plan.n_cells, query.plan.n_seq_ids), (spec, budget)
            assert query.plan.n_cells >= len(req.prompt_tokens) + 40 * run.alloc.n_seqs
            if layout.streams:  # a stream for each sample, each holding its longest row
                assert query.plan.n_seq_ids == run.alloc.n_seqs
                streams = run.alloc.n_seqs * memory.padded(run.row_cells)
                assert query.plan.kv_bytes == int(memory.kv_bytes_per_cell * streams)
    plan = rt.plan("What is 2 + 3?", strategy="maj@3", max_tokens=24)
    reserved: set[int] = set()
    ask(rt, "What is 2 + 3?", strategy="maj@3", max_tokens=24,
        on_step=lambda gen, events: reserved.add(rt.scheduler.reserved_cells()))
    assert reserved == {plan.n_cells}
