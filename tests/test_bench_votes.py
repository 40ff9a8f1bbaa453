"""bench/votes.py: reading how a strategy's samples voted back from a bench store."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _votes() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_votes", ROOT / "bench" / "votes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _record(spec: str, item: int, votes: dict[str, int], samples: int, stop: str, correct: bool,
            tokens: int, cancelled: int = 0) -> dict[str, Any]:
    return {"dataset": "add-1d", "item_id": f"add-1d-{item}", "strategy_spec": spec, "model": "m.gguf",
            "seed": 0, "settings_id": "s", "correct": correct,
            "result": {"votes": votes, "samples": [{}] * samples, "stop_reason": stop,
                       "stats": {"generated_tokens": tokens, "cancelled_tokens": cancelled}}}


RECORDS = [
    _record("adaptive:max=8", 0, {"4": 2}, 2, "beta-confident", True, 40),
    _record("adaptive:max=8", 1, {"5": 4, "6": 2, "7": 2}, 8, "k-max-reached", False, 180, 6),
    _record("maj@8", 0, {"4": 8}, 8, "all-finished", True, 160),
    _record("maj@8", 1, {}, 8, "all-finished", False, 200),  # no sample answered: no share to count
]


def test_rows_count_samples_stops_and_agreement_per_strategy() -> None:
    rows = {r.spec: r for r in _votes().vote_rows(RECORDS)}
    ada, maj = rows["adaptive:max=8"], rows["maj@8"]
    assert (ada.n, ada.accuracy, ada.samples, ada.tokens, ada.cancelled) == (2, 0.5, 5.0, 110.0, 3.0)
    assert ada.top_share == pytest.approx((1.0 + 0.5) / 2)
    assert ada.stops == {"beta-confident": 1, "k-max-reached": 1}
    assert maj.top_share == 1.0  # the query without answers has no share, not a share of 0


def test_only_keeps_the_strategies_asked_for() -> None:
    assert [r.spec for r in _votes().vote_rows(RECORDS, ["maj@"])] == ["maj@8"]


def test_main_reads_a_store_and_fails_in_one_line_without_one(tmp_path: Path, capsys) -> None:
    votes = _votes()
    assert votes.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert votes.main([str(tmp_path), "--only", "adaptive"]) == 0
    out = capsys.readouterr().out
    assert "| adaptive:max=8 | 2 | 50.0 | 5.00 | 0.75 | 110.0 | 3.0 | beta-confident 1, k-max-reached 1 |" in out
    assert "maj@8" not in out
