"""`edgescale pull` against a loopback Hugging Face mirror (tests/hf_mirror.py) serving the
packaged GGUF, with HF_ENDPOINT pointed at it; the store in a temporary folder (EDGESCALE_MODELS)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from edgescale.errors import ChecksumMismatch, DiskFull, InvalidModelFile
from tests.conftest import INTERRUPTIBLE_CLI
from tests.hf_mirror import Mirror, MirrorFile

REPO = "test-org/SmolLM2-135M-Instruct-GGUF"
GOOD = "SmolLM2-135M-Instruct-Q4_K_M.gguf"
CLI = [sys.executable, "-m", "edgescale.cli"]


@pytest.fixture(scope="module")
def gguf(model_path: Path) -> bytes:
    return model_path.read_bytes()


@pytest.fixture
def mirror(gguf: bytes) -> Iterator[Mirror]:
    m = Mirror(repos={REPO: {
        GOOD: MirrorFile(gguf),
        "SmolLM2-135M-Instruct-Q8_0.gguf": MirrorFile(gguf),
        "SmolLM2-135M-Instruct-Q2_K.gguf": MirrorFile(gguf[: 5 << 20]),  # truncated, its sha256 true
        "SmolLM2-135M-Instruct-Q3_K_S.gguf": MirrorFile(b"<html>not a model</html>\n" * 100),
        "SmolLM2-135M-Instruct-IQ4_XS.gguf": MirrorFile(gguf, sha256="0" * 64),  # the hub's sha256 is not the file's
        "README.md": MirrorFile(b"# a model card\n"),
    }}, files={"smol.gguf": MirrorFile(gguf)}).start()
    yield m
    m.stop()


@pytest.fixture
def env(mirror: Mirror, tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("EDGESCALE_OFFLINE", "HF_HUB_OFFLINE")}
    return {**e, "HF_ENDPOINT": mirror.url, "EDGESCALE_MODELS": str(tmp_path / "store"),
            "HF_HOME": str(tmp_path / "hf")}


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def one_error(p: subprocess.CompletedProcess[str]) -> bool:
    """The run ended with one error line, last (progress lines may come before it), no traceback."""
    lines = p.stderr.splitlines()
    return bool(lines) and lines[-1].startswith("error: ") and sum(x.startswith("error:") for x in lines) == 1 \
        and "Traceback" not in p.stderr


def test_pull_by_repo_and_quant_then_run_list_show_rm(mirror: Mirror, env: dict[str, str], gguf: bytes) -> None:
    p = cli(env, "pull", f"hf:{REPO}:q4_k_m", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["name"] == "smollm2-135m-instruct-q4_k_m" and out["sha256"] == hashlib.sha256(gguf).hexdigest()
    assert Path(out["path"]).read_bytes() == gguf and out["downloaded"] == len(gguf)
    assert [e[0] for e in mirror.log if "resolve" in e[1]] == ["HEAD", "GET"]
    # again: in the store already, nothing transferred
    again = cli(env, "pull", f"hf:{REPO}:Q4_K_M", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["downloaded"] == 0
    # usable by name, offline (nothing may download at run time)
    run = cli({**env, "EDGESCALE_OFFLINE": "1"}, "run", "-m", "smollm2-135m-instruct-q4_k_m", "--max-tokens", "4",
              "--json", "What is 2+2?")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["stats"]["generated_tokens"] >= 1
    rows = {r["name"]: r for r in json.loads(cli(env, "models", "--json").stdout)}
    fields = {"file", "size_bytes", "architecture", "parameters", "quant", "context_length", "chat_template",
              "chat_template_family", "kv_bytes_per_token"}
    for name in ("smollm2-135m", "gemma3-270m", "smollm2-135m-instruct-q4_k_m"):
        assert fields <= rows[name].keys(), name
    pulled = rows["smollm2-135m-instruct-q4_k_m"]
    assert pulled["source"] == f"hf:{REPO}:{GOOD}" and pulled["architecture"] == "llama"
    assert pulled["quant"] == "Q4_1" and pulled["context_length"] == 8192 and pulled["kv_bytes_per_token"] == 23040
    assert pulled["chat_template"] is True and pulled["chat_template_family"] == "chatml"
    assert rows["gemma3-270m"]["architecture"] == "gemma3" and rows["gemma3-270m"]["parameters"] > 2e8
    show = json.loads(cli(env, "models", "show", "smollm2-135m-instruct-q4_k_m", "--json").stdout)
    assert show["sha256"] == out["sha256"] and show["parameters"] == rows["smollm2-135m"]["parameters"]
    rm = cli(env, "models", "rm", "smollm2-135m-instruct-q4_k_m")
    assert rm.returncode == 0 and not Path(out["path"]).exists()
    gone = cli(env, "run", "-m", "smollm2-135m-instruct-q4_k_m", "hi")
    assert gone.returncode == 3 and one_error(gone)


def test_pull_chooses_a_quant_and_lists_the_others(env: dict[str, str]) -> None:
    p = cli(env, "pull", f"hf:{REPO}")
    assert p.returncode == 0, p.stderr
    assert f"chose {GOOD}" in p.stderr and "Q8_0.gguf" in p.stderr
    missing = cli(env, "pull", f"hf:{REPO}:Q6_K")
    assert missing.returncode == 2 and "no GGUF of quant Q6_K" in missing.stderr and "Q8_0" in missing.stderr


def test_resume_after_the_server_cuts_the_connection(mirror: Mirror, env: dict[str, str], gguf: bytes) -> None:
    mirror.cut_after = 40 << 20
    p = cli(env, "pull", f"hf:{REPO}:{GOOD}", "--json")
    assert p.returncode == 0, p.stderr
    gets = [e for e in mirror.gets() if "resolve" in e[1]]
    assert len(gets) == 2 and gets[0][2] is None
    resumed_at = int(gets[1][2].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 40 << 20
    assert Path(json.loads(p.stdout)["path"]).read_bytes() == gguf


def test_checksum_mismatch_deletes_the_file_and_names_both_sums(env: dict[str, str], gguf: bytes,
                                                              tmp_path: Path) -> None:
    p = cli(env, "pull", f"hf:{REPO}:IQ4_XS")
    assert p.returncode == 13 and one_error(p)
    assert "0" * 64 in p.stderr and hashlib.sha256(gguf).hexdigest() in p.stderr and "deleted" in p.stderr
    assert not list((tmp_path / "store").glob("*/*.gguf*"))
    url = env["HF_ENDPOINT"] + "/files/smol.gguf"
    wrong = cli(env, "pull", url, "--sha256", "ab" * 32)
    assert wrong.returncode == 13 and "ab" * 32 in wrong.stderr
    right = cli(env, "pull", url, "--sha256", hashlib.sha256(gguf).hexdigest(), "--name", "smol-url")
    assert right.returncode == 0, right.stderr


def test_truncated_and_non_gguf_files_are_refused(env: dict[str, str], tmp_path: Path) -> None:
    trunc = cli(env, "pull", f"hf:{REPO}:Q2_K")
    assert trunc.returncode == 4 and "truncated GGUF" in trunc.stderr and one_error(trunc)
    html = cli(env, "pull", f"hf:{REPO}:Q3_K_S")
    assert html.returncode == 4 and "not a GGUF file" in html.stderr
    assert json.loads(cli(env, "models", "--json").stdout)[-1]["source"] == "catalog"  # nothing registered
    assert not list((tmp_path / "store").glob("*/*.gguf*"))


def test_a_full_disk_is_refused_before_any_byte(mirror: Mirror, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """Disk full, simulated by a monkeypatched free-space check (``models.download.free_bytes``)."""
    from edgescale.models import download
    from edgescale.models.pull import pull

    monkeypatch.setenv("HF_ENDPOINT", mirror.url)
    monkeypatch.setenv("EDGESCALE_MODELS", str(tmp_path / "store"))
    monkeypatch.setattr(download, "free_bytes", lambda folder: 50 << 20)
    with pytest.raises(DiskFull, match=r"needs 98\.4 MB more and 52\.4 MB is free"):
        pull(f"hf:{REPO}:{GOOD}")
    assert not [e for e in mirror.gets() if "resolve" in e[1]]


def test_ctrl_c_keeps_a_partial_file_that_the_next_pull_resumes(mirror: Mirror, env: dict[str, str],
                                                                gguf: bytes, tmp_path: Path) -> None:
    mirror.bytes_per_s = 8e6  # ~12 s for the file
    proc = subprocess.Popen([*INTERRUPTIBLE_CLI, "pull", f"hf:{REPO}:{GOOD}", "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = tmp_path / "store" / "smollm2-135m-instruct-q4_k_m" / f"{GOOD}.part"
    deadline = time.monotonic() + 60
    while not (part.is_file() and part.stat().st_size > 8 << 20) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and str(part) in err and "resume" in err and "Traceback" not in err
    kept = part.stat().st_size
    assert 8 << 20 < kept < len(gguf)
    listing = cli(env, "models")
    assert "unfinished download" in listing.stdout and "smollm2-135m-instruct-q4_k_m" in listing.stdout
    mirror.bytes_per_s = None
    p = cli(env, "pull", f"hf:{REPO}:{GOOD}", "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["resumed_from"] == kept and res["downloaded"] == len(gguf) - kept
    assert mirror.gets()[-1][2] == f"bytes={kept}-"
    assert Path(res["path"]).read_bytes() == gguf and not part.exists()


@pytest.mark.parametrize("var", ["EDGESCALE_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_mode_never_touches_the_network(mirror: Mirror, env: dict[str, str], var: str) -> None:
    p = cli({**env, var: "1"}, "pull", f"hf:{REPO}:{GOOD}")
    assert p.returncode == 13 and "offline mode" in p.stderr and var in p.stderr
    url = cli({**env, var: "1"}, "pull", env["HF_ENDPOINT"] + "/files/smol.gguf")
    assert url.returncode == 13
    assert mirror.log == []
    not_pulled = cli({**env, var: "1"}, "run", "-m", f"hf:{REPO}:{GOOD}", "hi")
    assert not_pulled.returncode == 3 and "edgescale pull" in not_pulled.stderr and mirror.log == []


def test_import_a_local_file_and_bad_sources(env: dict[str, str], model_path: Path, tmp_path: Path) -> None:
    p = cli(env, "pull", str(model_path), "--name", "my-smol", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["path"].startswith(str(tmp_path / "store" / "my-smol"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    refused = cli(env, "pull", str(bad))
    assert refused.returncode == 4 and "refused" in refused.stderr
    for args, needle in [(["hf:nope"], "expected hf:ORG/REPO"), (["/no/such.gguf"], "not hf:ORG/REPO"),
                         (["hf:a/b", "--name", "Bad Name"], "model name"), (["hf:a/b", "--sha256", "xyz"], "64 hex"),
                         (["hf:a/b", "--name", "smollm2-135m"], "catalog model")]:
        r = cli(env, "pull", *args)
        assert r.returncode == 2 and needle in r.stderr and one_error(r), (args, r.stderr)
    missing = cli(env, "pull", "hf:test-org/no-such-repo:Q4_K_M")
    assert missing.returncode == 13 and one_error(missing)


def test_a_pulled_model_works_in_the_python_api(mirror: Mirror, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    from edgescale.api import Runtime
    from edgescale.models.pull import pull

    monkeypatch.setenv("HF_ENDPOINT", mirror.url)
    monkeypatch.setenv("EDGESCALE_MODELS", str(tmp_path / "store"))
    res = pull(f"hf:{REPO}:Q8_0")
    with pytest.raises(InvalidModelFile):
        pull(f"hf:{REPO}:Q2_K")
    with pytest.raises(ChecksumMismatch):
        pull(f"hf:{REPO}:IQ4_XS")
    with Runtime.load(res.model.name, threads=1) as rt:
        assert rt.ask("What is 2+2?", max_tokens=4).stats.generated_tokens >= 1


def test_a_pulled_name_works_where_m_does(env: dict[str, str], model_path: Path, tmp_path: Path) -> None:
    assert cli(env, "pull", str(model_path), "--name", "mine").returncode == 0
    plan = cli(env, "plan", "-m", "mine", "--json", "What is 2+2?")
    assert plan.returncode == 0, plan.stderr
    out = tmp_path / "mine-q8.gguf"
    q = cli(env, "quantize", "mine", str(out), "--type", "Q8_0")
    assert q.returncode == 0, q.stderr
    assert cli(env, "pull", str(out), "--json").returncode == 0  # a quantised copy, imported under its file's name
    batch = subprocess.run([*CLI, "batch", "-m", "mine-q8", "--max-tokens", "4"], env=env, capture_output=True,
                           text=True, input='{"prompt": "What is 2+2?"}\n', timeout=120)
    assert batch.returncode == 0, batch.stderr
    assert json.loads(batch.stdout)["stats"]["generated_tokens"] >= 1


def test_serve_a_pulled_model_by_name(env: dict[str, str], model_path: Path) -> None:
    import httpx

    from tests.serve_harness import ServerProcess

    assert cli(env, "pull", str(model_path), "--name", "served").returncode == 0
    server = ServerProcess(["-m", "served", "--threads", "1"], env={**env, "EDGESCALE_OFFLINE": "1"})
    try:
        models = httpx.get(server.url + "/v1/models", timeout=30).json()
        assert [m["id"] for m in models["data"]] == ["served"]
        reply = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
            "model": "served", "max_tokens": 4, "messages": [{"role": "user", "content": "What is 2+2?"}]}).json()
        assert reply["usage"]["completion_tokens"] >= 1
    finally:
        server.stop()


def test_two_pulls_of_one_model_at_once_download_it_once(mirror: Mirror, env: dict[str, str], gguf: bytes) -> None:
    mirror.bytes_per_s = 40e6
    procs = [subprocess.Popen([*CLI, "pull", f"hf:{REPO}:{GOOD}", "--json"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    results = [json.loads(o) for o, _ in outs]
    assert sorted(r["downloaded"] for r in results) == [0, len(gguf)]  # the second waited for the first
    assert len([e for e in mirror.gets() if "resolve" in e[1]]) == 1
    assert Path(results[0]["path"]).read_bytes() == gguf
    assert cli(env, "models", "rm", "smollm2-135m-instruct-q4_k_m").returncode == 0
