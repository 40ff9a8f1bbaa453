"""Summaries of bench records: one row per strategy, as a rich table, Markdown and JSON.

Per strategy: accuracy with its 95% Wilson interval; generated tokens per
query including probe tokens (``Stats.total_tokens``); wall time per query
(p50, p95, mean); the largest per-query peak RSS and peak KV bytes; and,
when a ``maj@k`` row is present, ratios to it (mean tokens, mean wall time)
and the paired accuracy difference on the same questions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from edgescale.evals.stats import Interval, PairedDiff, mean, paired_difference, percentile, wilson

MB = 1024 * 1024


@dataclass(frozen=True)
class StrategyRow:
    label: str
    spec: str
    n: int
    correct: int
    accuracy: float
    ci: Interval
    tokens_per_query: float  # generated + probe tokens
    probe_tokens_per_query: float
    wall_p50_s: float
    wall_p95_s: float
    wall_mean_s: float
    peak_rss_bytes: int
    peak_kv_bytes: int
    no_answer: float = math.nan  # share of the samples that ran to their end (stop, length) with no answer
    tokens_vs_ref: float | None = None  # mean tokens / reference's mean tokens
    wall_vs_ref: float | None = None
    acc_vs_ref: PairedDiff | None = None  # accuracy minus the reference's, same questions


@dataclass(frozen=True)
class Summary:
    title: str
    reference: str | None  # label of the maj@k row the ratios refer to
    rows: tuple[StrategyRow, ...]


def _row(label: str, spec: str, records: Sequence[Mapping[str, Any]]) -> StrategyRow:
    stats = [r["result"]["stats"] for r in records]
    walls = [float(s["wall_s"]) for s in stats]
    correct = sum(bool(r["correct"]) for r in records)
    n = len(records)
    return StrategyRow(
        label=label, spec=spec, n=n, correct=correct, accuracy=correct / n if n else math.nan,
        ci=wilson(correct, n),
        tokens_per_query=mean([float(s["total_tokens"]) for s in stats]),
        probe_tokens_per_query=mean([float(s["probe_tokens"]) for s in stats]),
        wall_p50_s=percentile(walls, 50), wall_p95_s=percentile(walls, 95), wall_mean_s=mean(walls),
        peak_rss_bytes=max((int(r.get("rss_peak_bytes") or 0) for r in records), default=0),
        peak_kv_bytes=max((int(s["peak_kv_bytes"]) for s in stats), default=0),
        no_answer=no_answer_share(records),
    )


def no_answer_share(records: Sequence[Mapping[str, Any]]) -> float:
    """Of the samples that ran to their end (stop or length), the share with no answer:
    the ones that cannot vote."""
    ended = [s for r in records for s in r["result"]["samples"] if s["finish_reason"] in ("stop", "length")]
    return sum(s["answer"] is None for s in ended) / len(ended) if ended else math.nan


def reference_label(specs: Mapping[str, str]) -> str | None:
    """The first ``maj@k`` strategy (label), if any."""
    return next((label for label, spec in specs.items() if spec.startswith("maj@")), None)


def summarize(title: str, specs: Mapping[str, str], records: Mapping[str, Sequence[Mapping[str, Any]]]) -> Summary:
    """``specs``: label -> canonical spec, in table order; ``records``: label -> its records."""
    rows = {label: _row(label, spec, records.get(label, ())) for label, spec in specs.items()}
    ref = reference_label(specs)
    if ref is None or rows[ref].n == 0:
        return Summary(title, None, tuple(rows.values()))
    base = rows[ref]
    ref_correct = {str(r["item_id"]): float(bool(r["correct"])) for r in records[ref]}
    out = []
    for label, row in rows.items():
        mine = {str(r["item_id"]): float(bool(r["correct"])) for r in records.get(label, ())}
        shared = [i for i in mine if i in ref_correct]
        out.append(
            replace(
                row,
                tokens_vs_ref=_ratio(row.tokens_per_query, base.tokens_per_query),
                wall_vs_ref=_ratio(row.wall_mean_s, base.wall_mean_s),
                acc_vs_ref=paired_difference([mine[i] for i in shared], [ref_correct[i] for i in shared]),
            )
        )
    return Summary(title, ref, tuple(out))


def _ratio(a: float, b: float) -> float | None:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else None


# --------------------------------------------------------------------------
# Rendering


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}"


def _cells(row: StrategyRow, has_ref: bool) -> list[str]:
    cells = [
        row.label, str(row.n), f"{_pct(row.accuracy)} [{_pct(row.ci.low)}, {_pct(row.ci.high)}]",
        f"{row.tokens_per_query:.1f}", f"{row.wall_p50_s:.2f}", f"{row.wall_p95_s:.2f}",
        f"{row.peak_rss_bytes / MB:.0f}", f"{row.peak_kv_bytes / MB:.1f}", _pct(row.no_answer),
    ]
    if has_ref:
        d = row.acc_vs_ref
        diff = "-" if d is None or math.isnan(d.diff) else (
            f"{100 * d.diff:+.1f}" + ("" if math.isnan(d.low) else f" [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"))
        cells += [_times(row.tokens_vs_ref), _times(row.wall_vs_ref), diff]
    return cells


def _times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def headers(has_ref: bool, ref: str | None = None) -> list[str]:
    cols = ["strategy", "n", "accuracy % [95% CI]", "tokens/query", "wall p50 s", "wall p95 s",
            "peak RSS MB", "peak KV MB", "no answer %"]
    if has_ref:
        cols += [f"tokens vs {ref}", f"wall vs {ref}", f"acc - {ref} (pts) [95% CI]"]
    return cols


def rich_table(summary: Summary) -> Any:
    from rich.table import Table

    has_ref = summary.reference is not None
    table = Table(title=summary.title, title_justify="left")
    for i, name in enumerate(headers(has_ref, summary.reference)):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in summary.rows:
        table.add_row(*_cells(row, has_ref))
    return table


def markdown_table(summary: Summary) -> str:
    has_ref = summary.reference is not None
    cols = headers(has_ref, summary.reference)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
    lines += ["| " + " | ".join(_cells(row, has_ref)) + " |" for row in summary.rows]
    return "\n".join(lines) + "\n"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def summary_dict(summary: Summary) -> dict[str, Any]:
    """JSON-ready summary (NaN -> null)."""
    return _clean({"title": summary.title, "reference": summary.reference,
                   "rows": [asdict(row) for row in summary.rows]})
