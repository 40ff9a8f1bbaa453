"""Quantized KV caches: the types, their bytes against llama.cpp's own figure, the refusals,
the planner's auto rule (scripted memory models), and the flags of every command."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from edgescale.errors import UsageError
from edgescale.runtime.kv_types import F16, KvType, parse_kv_type
from edgescale.runtime.memory import MemoryModel
from edgescale.strategies.kv_choice import kv_type_for
from edgescale.strategies.planner import Budget, QueryShape
from edgescale.strategies.spec import Majority

MB = 2**20


def test_kv_type_names() -> None:
    assert parse_kv_type("q8_0") == KvType("q8_0", "q8_0")
    assert parse_kv_type(" Q8_0/F16 ") == KvType("q8_0", "f16") and parse_kv_type("q8_0/f16").name == "q8_0/f16"
    assert not F16.lossy and parse_kv_type("q4_0").lossy and parse_kv_type("q4_0/f16").lossy
    assert parse_kv_type("f16/q8_0").quantized_v and not parse_kv_type("q8_0/f16").quantized_v
    for bad in ("q3_k", "q8_0/q8_0/f16", "", "auto"):
        with pytest.raises(UsageError, match="bad KV cache type") as info:
            parse_kv_type(bad)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["q8_0", "q4_0", "q8_0/f16", "f16/q4_0", "bf16"])
def test_bytes_per_cell_match_llama_cpp(engine, name: str) -> None:  # type: ignore[no-untyped-def]
    kv = parse_kv_type(name)
    session = engine.session(n_seqs=4, n_cells=1024, max_batch=64, kv_type=kv)
    try:
        reported = session.ctx.reported
        assert reported["kv_cells"] == session.n_cells
        assert engine.info.kv_bytes(session.n_cells, kv.k, kv.v) == pytest.approx(reported["kv_mib"] * MB, rel=1e-3)
        assert session.kv_bytes_allocated() == pytest.approx(reported["kv_mib"] * MB, rel=1e-3)
    finally:
        session.close()
    # SmolLM2: 30 layers x 3 KV heads x 64: q8_0 keeps 34 bytes a block of 32, f16 64
    if name == "q8_0":
        assert engine.info.kv_bytes_per_cell("q8_0", "q8_0") == 30 * 3 * 64 * 2 * 34 / 32


def test_a_quantized_cache_decodes_what_f16_decodes(engine) -> None:  # type: ignore[no-untyped-def]
    """q8_0 keeps the model: teacher-forced on the evaluation text, its perplexity within 1% of
    f16's and its argmax f16's at most positions (a near-tie flips at any rounding)."""
    from edgescale.evals.quality import kv_type_cost

    cost = kv_type_cost(engine, "q8_0", rows=8, max_tokens=512)
    assert cost.tokens == 8 * 63 and cost.ppl_ratio < 1.01 and cost.top1 > 0.85
    q4 = kv_type_cost(engine, "q4_0", rows=8, max_tokens=512)
    assert q4.max_abs_logit_diff > cost.max_abs_logit_diff  # fewer bits, further from f16


def test_quantized_values_need_flash_attention(model_path) -> None:  # type: ignore[no-untyped-def]
    from edgescale.runtime.llama_engine import LlamaCppEngine

    with LlamaCppEngine.load(model_path, n_threads=1, flash_attn=False) as eng:
        with pytest.raises(UsageError, match="needs llama.cpp's flash attention") as info:
            eng.session(n_seqs=1, n_cells=256, max_batch=32, kv_type=parse_kv_type("q8_0"))
        assert "\n" not in str(info.value)
        keys_only = eng.session(n_seqs=1, n_cells=256, max_batch=32, kv_type=parse_kv_type("q8_0/f16"))
        try:
            row = keys_only.prefill(eng.tokenize("Hello there"), [0])
            assert len(row) == eng.info.n_vocab
        finally:
            keys_only.close()


# -- the planner's rule -----------------------------------------------------------------------
def _memory(per_cell: float) -> MemoryModel:
    return MemoryModel(fixed_bytes=100 * MB, kv_bytes_per_cell=per_cell, compute_per_token=0,
                       logits_bytes_per_seq=0, cell_pad=1)


BYTES = {"f16": 1000.0, "q8_0": 531.25, "q4_0": 281.25}
SHAPE = QueryShape(prompt_tokens=100, max_new_tokens=1000, strategy=Majority(8))


def _choose(budget_mb: float | None, candidates):  # type: ignore[no-untyped-def]
    return kv_type_for(SHAPE, None, lambda kv: _memory(BYTES[kv.k]), Budget(memory_bytes=None if budget_mb is None
                       else int(budget_mb * MB)), None, candidates)


OK = [(parse_kv_type("q8_0"), None), (parse_kv_type("q4_0"), None)]


def test_auto_is_f16_without_a_budget_or_when_f16_fits() -> None:
    assert _choose(None, OK).kv_type == F16
    # 8 samples x 1000 tokens + the prompt: 8,100 cells, 7.7 MB of f16 at 1,000 bytes a cell, next
    # to 100 MB of fixed cost, planned to 97% of the budget
    choice = _choose(112, OK)
    assert choice.kv_type == F16 and "f16 fits the plan" in choice.reason


def test_auto_takes_the_first_type_that_fits_the_plan() -> None:
    # 108 MB: f16 holds 4 samples, q8_0 all 8
    choice = _choose(108, OK)
    assert choice.kv_type == parse_kv_type("q8_0")
    assert "f16 fits 4 sample(s)" in choice.reason and "q8_0 fits the plan (8 sample(s)" in choice.reason
    # q8_0 refused (its cost over the bound): q4_0, and the reason says why not q8_0
    refused = [(parse_kv_type("q8_0"), "q8_0 costs 5% perplexity"), (parse_kv_type("q4_0"), None)]
    choice = _choose(108, refused)
    assert choice.kv_type == parse_kv_type("q4_0") and "q8_0 not chosen: q8_0 costs 5%" in choice.reason


def test_auto_never_takes_a_refused_type_and_else_the_most_samples() -> None:
    refused = [(kv, "not measured") for kv, _ in OK]
    assert _choose(108, refused).kv_type == F16  # the plan is cut to what f16 fits
    # nothing fits all 8: the type that fits the most
    choice = _choose(105, OK)
    assert choice.kv_type == parse_kv_type("q4_0") and "fits the most" in choice.reason


# -- the commands ---------------------------------------------------------------------------
def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "edgescale.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "EDGESCALE_THREADS": "2", **(env or {})})


@pytest.mark.parametrize("command", [["run", "hi"], ["plan", "hi"], ["batch"], ["serve"],
                                     ["bench", "--dataset", "arith-1d", "--limit", "1"],
                                     ["tune", "--task", "x", "--dataset", "arith-1d", "--limit", "2"]])
def test_a_bad_kv_type_is_a_one_line_error_on_every_command(command: list[str]) -> None:
    proc = cli(*command, "--kv-type", "q3_k")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines and "bad KV cache type 'q3_k'" in lines[-1] and "Traceback" not in proc.stderr


def test_plan_and_run_use_the_type_asked_for() -> None:
    proc = cli("plan", "--json", "-s", "maj@4", "--kv-type", "q8_0/f16", "--max-tokens", "64", "Hi")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["kv_type"] == {"kv_type": "q8_0/f16", "why": "as asked (--kv-type)"}
    f16 = json.loads(cli("plan", "--json", "-s", "maj@4", "--kv-type", "f16", "--max-tokens", "64", "Hi").stdout)
    assert out["kv_bytes"] == pytest.approx(f16["kv_bytes"] * (34 / 32 + 2) / 4, rel=1e-3)
    run = cli("run", "--json", "--kv-type", "q8_0", "--max-tokens", "8", "The capital of France is")
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout)
    assert res["kv_type"]["kv_type"] == "q8_0" and res["stats"]["generated_tokens"] >= 1


def test_batch_and_bench_run_with_a_quantized_cache(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lines = "".join(json.dumps({"id": i, "prompt": f"What is {i} plus {i}?"}) + "\n" for i in range(3))
    proc = subprocess.run([sys.executable, "-m", "edgescale.cli", "batch", "--kv-type", "q4_0", "-n", "16",
                           "--parallel", "2"], input=lines, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(x)["ok"] for x in proc.stdout.splitlines()] == [True] * 3
    bench = cli("bench", "--dataset", "arith-1d", "--limit", "2", "-S", "single", "-n", "16", "--kv-type", "q8_0",
                "--json")
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)


def test_the_shared_loop_keeps_the_runtime_type(engine) -> None:  # type: ignore[no-untyped-def]
    from edgescale.api import Runtime
    from edgescale.scheduler.config import SchedulerConfig

    rt = Runtime(engine, "smollm2-135m", scheduler=SchedulerConfig(kv_layout="streams"))
    try:
        rt.use_kv_type("q8_0")
        rt.configure_scheduler(replace(rt.scheduler_config, max_running=2))
        res = rt.ask("What is 2 plus 2?", strategy="maj@2", max_tokens=12, answer="number")
        assert res.samples and rt.scheduler._shared is not None  # noqa: SLF001
        shared = rt.scheduler._shared.session  # noqa: SLF001
        assert shared.kv_bytes_allocated() == int(shared.n_cells * engine.info.kv_bytes_per_cell("q8_0", "q8_0"))
        with pytest.raises(UsageError, match="already running"):
            rt.use_kv_type("f16")
    finally:
        rt.scheduler.close()
