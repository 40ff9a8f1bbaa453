"""CLI behaviour that does not depend on a model, on a scripted engine registered in the
backend registry (cli.app.main takes the registry): options, batch records, notices."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from edgescale.cli.app import main
from edgescale.loader import default_backends
from tests.fake_engine import fake_backend


@pytest.fixture
def registry(tmp_path: Path):  # type: ignore[no-untyped-def]
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"not read: the fake engine stands in for it")
    reg = default_backends()
    reg.register(fake_backend([" The answer is 7.", " The answer is 7.", " I think 9."], model))
    return reg


def run_cli(registry, monkeypatch, capsys, *args: str, stdin: bytes = b""):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    monkeypatch.setenv("EDGESCALE_THREADS", "1")
    rc = main(list(args), registry=registry)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_run_on_the_scripted_engine(registry, monkeypatch, capsys) -> None:
    rc, out, err = run_cli(registry, monkeypatch, capsys, "run", "--backend", "fake", "-k", "3", "--json", "Q?")
    assert rc == 0, err
    res = json.loads(out)
    assert res["answer"] == "7" and res["votes"] == {"7": 2, "9": 1} and res["stats"]["backend"] == "fake"
    assert res["plan"]["strategy"] == "maj@3" and res["plan"]["predicted_s"] is None


def test_a_budget_without_a_measured_profile_plans_from_the_estimate(registry, monkeypatch, capsys,
                                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    rc, out, err = run_cli(registry, monkeypatch, capsys, "run", "--backend", "fake", "--deadline", "30s",
                           "--json", "Q?")
    assert rc == 0, err
    res = json.loads(out)
    assert res["strategy"] == "auto" and res["plan"]["profile_measured"] is False
    assert err.count("no measured speed profile") == 1 and "devices --calibrate" in err
    assert not (tmp_path / "empty-cache" / "edgescale" / "profiles").exists()  # nothing was measured


def test_invalid_values_name_the_flag(registry, monkeypatch, capsys) -> None:
    for args, needle in ((["-k", "65"], "--samples must be between 1 and 64"),
                         (["--top-p", "0"], "--top-p must be greater than 0"),
                         (["--max-tokens", "40000"], "--max-tokens must be between 1 and 32768")):
        rc, _, err = run_cli(registry, monkeypatch, capsys, "run", "--backend", "fake", *args, "Q?")
        assert rc == 2 and err.strip().count("\n") == 0 and needle in err, err


def test_unknown_backend_lists_the_registered_ones(registry, monkeypatch, capsys) -> None:
    rc, _, err = run_cli(registry, monkeypatch, capsys, "run", "--backend", "tpu", "Q?")
    assert rc == 2 and "unknown backend 'tpu'; choose one of: llama.cpp, onnx, auto, fake" in err


def test_non_utf8_stdin_is_a_usage_error(registry, monkeypatch, capsys) -> None:
    rc, out, err = run_cli(registry, monkeypatch, capsys, "run", "--backend", "fake", stdin=b"What is \xff?\n")
    assert rc == 2 and out == ""
    assert err.strip() == "error: stdin is not UTF-8 text (byte 0xff at offset 8)"


def test_too_many_threads_are_cut_to_the_cores_with_a_notice(registry, monkeypatch, capsys) -> None:
    from edgescale.devices.cpu import allowed_cpus

    rc, _, err = run_cli(registry, monkeypatch, capsys, "run", "--backend", "fake", "--threads", "512", "Q?")
    assert rc == 0
    assert f"--threads 512 is more than the {len(allowed_cpus())} CPU(s)" in err


def test_batch_bad_lines_become_error_records_and_the_rest_go_on(registry, monkeypatch, capsys) -> None:
    lines = [b'{"id": 1, "prompt": "Q?", "k": 3}', b'{"id": 2, "prompt": "Q\xff"}', b"not json",
             b'{"id": 4, "prompt": "Q?", "k": 99}', b'{"id": 5, "prompt": "Q?", "colour": "red"}',
             b'{"id": 6, "prompt": "Q?"}']
    rc, out, err = run_cli(registry, monkeypatch, capsys, "batch", "--backend", "fake",
                           stdin=b"\n".join(lines) + b"\n")
    records = [json.loads(x) for x in out.splitlines()]
    assert rc == 1 and [r["ok"] for r in records] == [True, False, False, False, False, True]
    assert [r["id"] for r in records] == [1, None, None, 4, 5, 6]
    assert records[1]["error"] == "line 2: the line is not UTF-8 text (byte 0xff at offset 22)"
    assert records[2]["error"].startswith("line 3: not valid JSON")
    assert records[3]["error"] == "line 4: field 'k' must be between 1 and 64, got 99"
    assert records[4]["error"] == "line 5: unknown field(s) colour"
    assert records[0]["answer"] == "7" and "4 line(s) failed" in err


def test_batch_resume_skips_the_lines_an_earlier_run_answered(registry, monkeypatch, capsys,
                                                            tmp_path: Path) -> None:
    queries = b"".join(b'{"id": %d, "prompt": "Q?"}\n' % i for i in range(1, 5))
    done = tmp_path / "out.jsonl"
    done.write_text('{"id": 1, "ok": true}\n{"id": 2, "ok": true}\n{"id": 3, "ok"')  # cut off mid-line
    rc, out, _ = run_cli(registry, monkeypatch, capsys, "batch", "--backend", "fake", "--resume", str(done),
                         stdin=queries)
    assert rc == 0 and [json.loads(x)["id"] for x in out.splitlines()] == [3, 4]


def test_quantize_onto_an_existing_file_names_the_flag(tmp_path: Path, monkeypatch, capsys) -> None:
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"x")
    rc, _, err = run_cli(default_backends(), monkeypatch, capsys, "quantize", "smollm2-135m", str(dst),
                         "--type", "Q4_0")
    assert rc == 2 and err.strip() == f"error: {dst} exists; add --overwrite to replace it"
