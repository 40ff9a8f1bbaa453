"""Issue 28's study: every strategy on every set and model, the targets checked, one figure.

Reads bench stores (``edgescale bench --out``), one per (model, set), each holding the
same strategies run side by side on the same questions; loads no model. Prints a markdown
table per store (the bench's own summary rows) and then the targets:

- ``adaptive`` (default) spends at most 0.7x ``maj@8``'s tokens at accuracy inside maj@8's
  95% interval;
- ``auto`` (default policy) spends at most 0.5x at accuracy inside the best fixed strategy's
  interval (the best of the stored strategies that are not ``auto``), with the paired
  difference auto - best and its 95% interval.

With ``--plot FILE`` it draws accuracy against tokens-vs-maj@8, one panel per store.

    python bench/spend_study.py smollm2/arith-1d=/tmp/b28/arith-1d-smollm2 ... [--plot study.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from give_up_replay import load

from edgescale.evals.bench_report import StrategyRow, summarize
from edgescale.evals.stats import paired_difference

REFERENCE = "maj@8"
ADAPTIVE, AUTO = "adaptive", "auto"


def load_store(store: Path, labels: Sequence[str] | None) -> tuple[dict[str, str], dict[str, list[dict[str, Any]]]]:
    """label -> spec, label -> records (the last per question), for questions every label ran;
    an ``auto`` run is labelled by its spec (its policy)."""
    runs = load(store, label=lambda r: r["strategy"] if r["strategy"] != "auto" else r["strategy_spec"])
    recs = {k: v for k, v in runs.items() if labels is None or k in labels}
    specs = {k: next(iter(v.values()))["strategy_spec"] for k, v in recs.items()}
    common = set.intersection(*(set(v) for v in recs.values())) if recs else set()
    ordered = sorted(common, key=lambda i: int(i.rsplit("-", 1)[1]))
    return specs, {k: [v[i] for i in ordered] for k, v in recs.items()}


def auto_label(labels: Sequence[str], default_id: str) -> str | None:
    return next((x for x in labels if x == f"auto:policy={default_id}"), None)


def check(name: str, records: dict[str, list[dict[str, Any]]], rows: dict[str, StrategyRow],
          default_id: str) -> list[str]:
    out = []
    ref = rows[REFERENCE]
    if ADAPTIVE in rows:
        a = rows[ADAPTIVE]
        ok = (a.tokens_vs_ref or 9) <= 0.7 and ref.ci.low <= a.accuracy <= ref.ci.high or a.accuracy > ref.ci.high
        out.append(f"| {name} | adaptive <= 0.7x, acc in maj@8's interval | {a.tokens_vs_ref:.2f}x, "
                   f"{100 * a.accuracy:.0f}% vs maj@8 {100 * ref.accuracy:.0f}% [{100 * ref.ci.low:.1f}, "
                   f"{100 * ref.ci.high:.1f}] | {'met' if ok else 'missed'} |")
    auto = auto_label(list(rows), default_id)
    fixed = [r for k, r in rows.items() if not k.startswith("auto")]
    if auto is not None and fixed:
        best = max(fixed, key=lambda r: (r.accuracy, -r.tokens_per_query))
        u = rows[auto]
        d = paired_difference([float(r["correct"]) for r in records[auto]],
                              [float(r["correct"]) for r in records[best.label]])
        ok = (u.tokens_vs_ref or 9) <= 0.5 and u.accuracy >= best.ci.low
        out.append(f"| {name} | auto <= 0.5x, acc in best fixed's interval | {u.tokens_vs_ref:.2f}x, "
                   f"{100 * u.accuracy:.0f}% vs {best.label} {100 * best.accuracy:.0f}% [{100 * best.ci.low:.1f}, "
                   f"{100 * best.ci.high:.1f}]; paired {100 * d.diff:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] "
                   f"| {'met' if ok else 'missed'} |")
    return out


def table(rows: Sequence[StrategyRow], default_id: str) -> str:
    lines = ["| strategy | accuracy % [95% CI] | tokens/query | tokens vs maj@8 | acc - maj@8 (pts) [95% CI] |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        d = r.acc_vs_ref
        diff = ("" if d is None or r.label == REFERENCE
                else f"{100 * d.diff:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]")
        name = "**auto** (default)" if r.label == f"auto:policy={default_id}" else r.label
        lines.append(f"| {name} | {100 * r.accuracy:.1f} [{100 * r.ci.low:.1f}, {100 * r.ci.high:.1f}] | "
                     f"{r.tokens_per_query:.1f} | {r.tokens_vs_ref or 0:.2f}x | {diff} |")
    return "\n".join(lines) + "\n"


def plot(panels: list[tuple[str, dict[str, StrategyRow]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(panels))
    rows_n = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 4.2 * rows_n), squeeze=False)
    for ax, (name, rows) in zip(axes.flat, panels):
        for label, r in rows.items():
            x = r.tokens_vs_ref or 0.0
            y, lo, hi = 100 * r.accuracy, 100 * r.ci.low, 100 * r.ci.high
            ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", capsize=3)
            short = "auto" if label.startswith("auto:policy=default") else label.replace(":online=1,temp=0.4", "")
            ax.annotate(short.replace("auto:policy=", "auto:"), (x, y), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        ax.axvline(0.5, color="grey", lw=0.6, ls=":")
        ax.axvline(0.7, color="grey", lw=0.6, ls="--")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("generated tokens vs maj@8")
        ax.set_ylabel("accuracy % (95% CI)")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    from edgescale.strategies.policy import DEFAULT_POLICY

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stores", nargs="+", help="NAME=STORE")
    ap.add_argument("--labels", default=None, help="strategy labels to keep, separated by ; (default: all)")
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    labels = args.labels.split(";") if args.labels else None
    default_id = DEFAULT_POLICY.id()
    checks: list[str] = []
    panels = []
    for item in args.stores:
        name, _, store = item.partition("=")
        specs, records = load_store(Path(store), labels)
        if REFERENCE not in records:
            raise SystemExit(f"error: {store} has no {REFERENCE} records")
        summary = summarize(name, specs, records)
        rows = {r.label: r for r in summary.rows}
        print(f"**{name}** (n={len(records[REFERENCE])})\n")
        print(table(summary.rows, default_id))
        checks += check(name, records, rows, default_id)
        panels.append((name, rows))
    print("| set | target | measured | |\n|---|---|---|---|")
    print("\n".join(checks))
    if args.plot is not None:
        plot(panels, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
