"""The CLI end to end, as a user runs it: a subprocess per command, real model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "edgescale.cli"]


def cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "EDGESCALE_THREADS": "2", **(env or {})}
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=300, env=full_env)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_run_prints_an_answer() -> None:
    proc = cli("run", "-n", "24", "What is 12+7?")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert "[single]" in proc.stderr


def test_run_json_schema() -> None:
    proc = cli("run", "--json", "-k", "3", "-n", "24", "--seed", "5", "What is 12+7?")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["strategy"] == "maj@3"
    assert set(d) >= {"answer", "text", "votes", "samples", "stats", "stop_reason", "model"}
    assert len(d["samples"]) == 3
    for s in d["samples"]:
        assert isinstance(s["text"], str) and s["n_tokens"] >= 1
        assert s["finish_reason"] in ("stop", "length")
    st = d["stats"]
    for key in ("prompt_tokens", "generated_tokens", "wall_s", "ttft_s", "peak_rss_bytes", "peak_kv_bytes"):
        assert st[key] > 0, key
    assert st["generated_tokens"] == sum(s["n_tokens"] for s in d["samples"])


def test_run_reads_stdin() -> None:
    proc = cli("run", "--json", "-n", "8", stdin="What is 2+2?\n")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stats"]["prompt_tokens"] > 5


def test_env_default_model(tmp_path: Path) -> None:
    proc = cli("run", "-n", "4", "hi", env={"EDGESCALE_MODEL": str(tmp_path / "missing.gguf")})
    assert_one_line_error(proc, 3, "not found")


def test_batch_keeps_order_ids_and_survives_a_bad_line() -> None:
    lines = [
        json.dumps({"id": "a", "prompt": "What is 1+1?", "max_tokens": 8}),
        "{not json",
        json.dumps({"id": 7, "prompt": "", "max_tokens": 8}),
        json.dumps({"id": "c", "question": "What is 3+3?", "max_tokens": 8, "strategy": "ffs@2"}),
        json.dumps({"id": "d", "prompt": "x", "k": 0}),
    ]
    proc = cli("batch", stdin="\n".join(lines) + "\n")
    assert proc.returncode == 1
    out = [json.loads(x) for x in proc.stdout.strip().splitlines()]
    assert [o["id"] for o in out] == ["a", None, 7, "c", "d"]
    assert [o["ok"] for o in out] == [True, False, False, True, False]
    assert out[1]["line"] == 2 and "not valid JSON" in out[1]["error"]
    assert "empty prompt" in out[2]["error"]
    assert out[3]["strategy"] == "ffs@2"
    assert "Traceback" not in proc.stderr


def test_models_json() -> None:
    proc = cli("models", "--json")
    assert proc.returncode == 0
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["smollm2-135m"]["installed"] and rows["smollm2-135m"]["default"]


def test_error_missing_model() -> None:
    assert_one_line_error(cli("run", "-m", "/no/such/model.gguf", "hi"), 3, "not found")


def test_error_not_a_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"this is not a model at all, just some bytes" * 10)
    assert_one_line_error(cli("run", "-m", str(bad), "hi"), 4, "not a GGUF")


@pytest.mark.parametrize("cut", [20, 4096, 1_000_000, 60_000_000])
def test_error_truncated_gguf(tmp_path: Path, model_path: Path, cut: int) -> None:
    bad = tmp_path / "t.gguf"
    with model_path.open("rb") as fh:
        bad.write_bytes(fh.read(cut))
    assert_one_line_error(cli("run", "-m", str(bad), "hi"), 4, "truncated")


def test_error_empty_prompt() -> None:
    assert_one_line_error(cli("run", "   "), 2, "empty prompt")


def test_error_prompt_longer_than_context() -> None:
    assert_one_line_error(cli("run", "word " * 9000), 6, "context")


@pytest.mark.parametrize("args,needle", [
    (["-k", "0"], "--samples"),
    (["--max-tokens", "abc"], "--max-tokens"),
    (["--temperature", "-1"], "--temperature"),
    (["--strategy", "maj@"], "valid forms"),
    (["--answer", "poem"], "--answer"),
    (["--deadline", "soon"], "duration"),
    (["--bogus"], "No such option"),
])
def test_error_invalid_options(args: list[str], needle: str) -> None:
    assert_one_line_error(cli("run", *args, "hi"), 2, needle)


def test_quantize_and_convert_commands(tmp_path: Path) -> None:
    q = cli("quantize", "smollm2-135m", str(tmp_path / "q4_0.gguf"), "--type", "Q4_0", "--json")
    assert q.returncode == 0, q.stderr
    rep = json.loads(q.stdout)["quantize"]
    assert rep["dst_quant"] == "Q4_0" and rep["requantized"] and "already quantised" in rep["warning"]
    c = cli("convert", str(tmp_path / "q4_0.gguf"), str(tmp_path / "onnx"))
    assert c.returncode == 0, c.stderr
    assert "carried over exactly" in c.stdout
    r = cli("run", "--backend", "onnx", "-m", str(tmp_path / "onnx"), "--json", "-n", "8", "-k", "2", "hi")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stats"]["backend"] == "onnx"


def test_quantize_rejects_unknown_type(tmp_path: Path) -> None:
    assert_one_line_error(cli("quantize", "smollm2-135m", str(tmp_path / "x.gguf"), "--type", "Q3_X"), 2,
                          "unknown quantisation type")


def test_quant_report_errors_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(cli("quant-report", str(tmp_path / "none.gguf"), "--no-floor"), 3, "not found")
    assert_one_line_error(cli("quant-report", "smollm2-135m", "--floor", "--bogus"), 2, "No such option")


def test_batch_interrupted_says_how_many_lines_and_how_to_resume() -> None:
    import signal

    env = {**os.environ, "EDGESCALE_THREADS": "2"}
    from tests.conftest import INTERRUPTIBLE_CLI

    proc = subprocess.Popen([*INTERRUPTIBLE_CLI, "batch", "-n", "8"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write('{"id": 1, "prompt": "What is 2+2?"}\n')
    proc.stdin.flush()
    first = json.loads(proc.stdout.readline())  # the first result is out; the second line never comes
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert first["id"] == 1 and first["ok"]
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("interrupted: 1 result line(s) written")
    assert "--resume" in err and "Traceback" not in err
