"""``NAME:TYPE``: a catalog model run as a copy in another weight type, made once into the
cache with llama.cpp's quantiser and reused (``edgescale.loader.runnable_model``)."""

from __future__ import annotations

import json
from pathlib import Path

from edgescale.models.catalog import copy_ref, find_entry, resolve_model
from tests.test_cli import assert_one_line_error, cli


def test_a_copy_reference_names_a_file_in_the_cache(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ref = copy_ref("smollm2-135m:q4_0")
    entry = find_entry("smollm2")
    assert ref is not None and entry is not None and ref.entry.name == entry.name and ref.qtype == "Q4_0"
    assert resolve_model("smollm2-135m:q4_0") == tmp_path / "edgescale" / "models" / "smollm2-135m.Q4_0-copy.gguf"
    assert copy_ref("smollm2-135m") is None and copy_ref("/models/a:b.gguf") is None and copy_ref("nope:q4_0") is None


def test_the_copy_is_made_once_and_reused(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    first = cli("run", "-m", "smollm2-135m:q4_0", "-n", "8", "--json", "What is 2 + 2?", env=env)
    assert first.returncode == 0, first.stderr
    copy = tmp_path / "edgescale" / "models" / "smollm2-135m.Q4_0-copy.gguf"
    made = copy.stat().st_mtime_ns
    second = cli("run", "-m", "smollm2-135m:q4_0", "-n", "8", "--json", "What is 2 + 2?", env=env)
    assert second.returncode == 0, second.stderr
    assert copy.stat().st_mtime_ns == made  # reused, not made again
    tokens = [[(s["text"], s["n_tokens"]) for s in json.loads(p.stdout)["samples"]] for p in (first, second)]
    assert tokens[0] == tokens[1]
    listed = json.loads(cli("models", "--json", env=env).stdout)
    assert next(r for r in listed if r["name"] == "smollm2-135m")["copies"] == ["smollm2-135m:q4_0"]
    assert resolve_model("smollm2-135m") != copy  # the catalog name still runs the shipped file


def test_a_copy_in_an_unknown_type_is_a_one_line_error(tmp_path: Path) -> None:
    proc = cli("run", "-m", "smollm2-135m:q9_9", "-n", "4", "hi", env={"XDG_CACHE_HOME": str(tmp_path)})
    assert_one_line_error(proc, 2, "Q9_9")
    assert not list(tmp_path.rglob("*.gguf"))  # nothing written
