"""`batch --ray` and `bench --ray` on a real two-node Ray cluster on loopback, started here.

The cluster (``ray.cluster_utils.Cluster``: a head and a second node, one CPU each)
lives for this module; every job is the CLI in a subprocess, joining it by address,
with the real default model. Greedy queries, so the cluster's records must equal
the one-machine records line for line.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

from tests.conftest import INTERRUPTIBLE_CLI

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a Ray cluster's start, then CLI runs of 300 s each at most
CLI = [sys.executable, "-m", "edgescale.cli"]
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# what must match between the cluster and one machine (times and thread counts may differ)
SAME = ("id", "ok", "answer", "text", "votes", "stop_reason", "error", "line")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    saved = {k: os.environ.get(k) for k in LOOPBACK}
    os.environ.update(LOOPBACK)  # before Ray is imported: every Ray server on 127.0.0.1
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        c.add_node(num_cpus=1)
        c.wait_for_nodes()
        yield str(c.address)
    finally:
        c.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_every_ray_server_of_the_cluster_listens_on_loopback_only(cluster: str) -> None:
    ray_pids = {p.pid for p in psutil.process_iter(["cmdline"])
                if any("ray" in part for part in (p.info["cmdline"] or ()))}
    listening = [c for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in ray_pids]
    assert listening, "no Ray server found"
    exposed = [c.laddr for c in listening if not _loopback(c.laddr.ip)]
    assert not exposed, exposed


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4 loopback on an IPv6 socket
    return (mapped or addr).is_loopback


def cli(*args: str, stdin: str = "", timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **LOOPBACK, "EDGESCALE_THREADS": "1"}
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


def queries(n: int, bad_at: int | None = None) -> str:
    lines = [json.dumps({"id": f"q{i}", "prompt": f"What is {i} plus {i + 2}?"}) for i in range(n)]
    if bad_at is not None:
        lines.insert(bad_at, "{not json")
    return "\n".join(lines) + "\n"


def same(record: dict[str, Any]) -> dict[str, Any]:
    kept = {k: record.get(k) for k in SAME}
    kept["samples"] = [(s["text"], s["n_tokens"]) for s in record.get("samples", [])]
    return kept


def records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_batch_on_two_nodes_equals_one_machine_line_for_line(cluster: str) -> None:
    stdin = queries(6, bad_at=3)
    local = cli("batch", "--max-tokens", "16", stdin=stdin)
    ray = cli("batch", "--max-tokens", "16", "--ray", cluster, "--actors", "2", stdin=stdin)
    assert local.returncode == ray.returncode == 1, ray.stderr  # the bad line
    assert "ray: 2 actor(s) x 1 thread(s) on 2 node(s)" in ray.stderr
    got, want = records(ray.stdout), records(local.stdout)
    assert len(got) == len(want) == 7
    assert [same(r) for r in got] == [same(r) for r in want]
    assert got[3]["ok"] is False and "line 4: not valid JSON" in got[3]["error"]


def test_parallel_auto_lets_each_actor_pick_its_lanes(cluster: str) -> None:
    proc = cli("batch", "--max-tokens", "8", "--ray", cluster, "--actors", "2", "--parallel", "auto",
               stdin=queries(4))
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in records(proc.stdout)] == [f"q{i}" for i in range(4)]
    assert "call(s) at once per actor" in proc.stderr


def test_bench_store_on_two_nodes_equals_one_machine(cluster: str, tmp_path: Path) -> None:
    args = ["bench", "--dataset", "arith-1d", "--limit", "3", "--prompt-style", "bare", "--max-tokens", "12",
            "--strategies", "single,maj@3"]
    local = cli(*args, "--out", str(tmp_path / "local"))
    ray = cli(*args, "--out", str(tmp_path / "ray"), "--ray", cluster, "--threads-per-actor", "1")
    assert local.returncode == 0 and ray.returncode == 0, ray.stderr

    def store(name: str) -> dict[tuple[str, str], Any]:
        rs = records((tmp_path / name / "results.jsonl").read_text())
        return {(r["item_id"], r["strategy"]): (r["answer"], r["correct"], r["result"]["stats"]["total_tokens"],
                                                [s["text"] for s in r["result"]["samples"]]) for r in rs}

    assert store("ray") == store("local") and len(store("ray")) == 6
    again = cli(*args, "--out", str(tmp_path / "ray"), "--ray", cluster)
    assert again.returncode == 0 and "0 queries run, 6 resumed" in again.stderr


def job_until(args: list[str], stdin: str, out: Path, lines: int, act: Callable[[subprocess.Popen[str]], None],
              timeout: float = 300) -> tuple[int, str]:
    """Run a CLI job writing its stdout to ``out``; once ``out`` holds ``lines`` lines (or the job
    ended), ``act`` on it; then wait for the job. Its exit code and stderr."""
    env = {**os.environ, **LOOPBACK, "EDGESCALE_THREADS": "1"}
    with out.open("w") as sink:
        proc = subprocess.Popen([*INTERRUPTIBLE_CLI, *args], stdin=subprocess.PIPE, stdout=sink,
                                stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
        deadline = time.monotonic() + 120
        while len(out.read_text().splitlines()) < lines and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        act(proc)
        proc.wait(timeout=timeout)
        return proc.returncode, proc.stderr.read()


def kill_a_worker(proc: subprocess.Popen[str]) -> None:
    victims = [p.pid for p in psutil.process_iter(["cmdline"])
               if any("BatchWorker" in part for part in p.info["cmdline"] or ())]
    assert victims, "no worker actor process found"
    os.kill(victims[0], signal.SIGKILL)


def test_killing_a_worker_loses_no_line_and_writes_none_twice(cluster: str, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    rc, err = job_until(["batch", "--max-tokens", "48", "--ray", cluster, "--actors", "2"], queries(12), out, 1,
                        kill_a_worker)
    assert rc == 0, err
    got = records(out.read_text())
    assert [r["id"] for r in got] == [f"q{i}" for i in range(12)]
    assert all(r["ok"] for r in got)


def test_a_line_whose_worker_dies_on_every_try_becomes_an_error_record(cluster: str, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    rc, err = job_until(["batch", "--max-tokens", "48", "--ray", cluster, "--actors", "2", "--retries", "0"],
                        queries(8), out, 1, kill_a_worker)
    got = records(out.read_text())
    assert [r["id"] for r in got] == [f"q{i}" for i in range(8)]  # every line once, in order
    failed = [r for r in got if not r["ok"]]
    assert rc == 1 and f"{len(failed)} line(s) failed" in err, err
    assert failed and all("Ray worker died on every try (1 try)" in r["error"] for r in failed)


def test_interrupted_cluster_job_resumes_where_it_stopped(cluster: str, tmp_path: Path) -> None:
    stdin = queries(8)
    out = tmp_path / "out.jsonl"
    rc, err = job_until(["batch", "--max-tokens", "32", "--ray", cluster, "--actors", "1"], stdin, out, 2,
                        lambda proc: proc.send_signal(signal.SIGINT), timeout=120)
    written = len(out.read_text().splitlines())
    assert rc == 130 and "interrupted:" in err and f"{written} result line(s) written" in err, err
    assert 2 <= written < 8
    rest = cli("batch", "--max-tokens", "32", "--ray", cluster, "--resume", str(out), stdin=stdin)
    assert rest.returncode == 0, rest.stderr
    got = records(out.read_text() + rest.stdout)
    assert [r["id"] for r in got] == [f"q{i}" for i in range(8)]
    local = cli("batch", "--max-tokens", "32", stdin=stdin)
    assert [same(r) for r in got] == [same(r) for r in records(local.stdout)]


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert needle in lines[0], lines[0]


def test_a_model_missing_on_a_node_is_named(cluster: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.gguf"
    proc = cli("batch", "--model", str(missing), "--ray", cluster, stdin=queries(1))
    one_line_error(proc, 3, "on node ")
    assert str(missing) in proc.stderr


def test_more_actors_than_the_cluster_holds_is_refused(cluster: str) -> None:
    proc = cli("batch", "--ray", cluster, "--actors", "3", stdin=queries(1))
    one_line_error(proc, 2, "--actors 3 x --threads-per-actor 1 needs 3 CPUs; the Ray cluster has 2")


def test_without_ray_installed_ray_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    # a directory on sys.path whose ray package fails to import, as an absent one does
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([*CLI, "batch", "--ray"], input=queries(1), capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    one_line_error(proc, 5, "pip install 'edgescale[cluster]'")


def test_the_one_machine_path_never_imports_ray() -> None:
    code = ("import sys; from edgescale.cli.app import main; rc = main(['batch', '--max-tokens', '4']); "
            "print('RAY' if 'ray' in sys.modules else 'NO-RAY', file=sys.stderr); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], input=queries(1), capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "EDGESCALE_THREADS": "1"})
    assert proc.returncode == 0 and proc.stderr.strip().endswith("NO-RAY"), proc.stderr
