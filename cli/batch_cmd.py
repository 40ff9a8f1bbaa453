"""`edgescale batch`: JSONL queries on stdin -> JSONL results on stdout, in order.

Each input line is a JSON object with "prompt" (or "question") and optionally
"id", "strategy", "k", "max_tokens", "temperature", "seed", "answer",
"choices", "stop", "system", "deadline". Command-line options give the
defaults. Every input line yields exactly one output line carrying the input's
"id"; a bad line yields {"id": ..., "line": N, "ok": false, "error": "..."} and
the rest go on. The exit code is 1 if any line failed.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer

from edgescale.cli import options as opt
from edgescale.cli.common import print_json
from edgescale.errors import EdgescaleError, UsageError

_KNOWN = {"id", "prompt", "question", "strategy", "k", "max_tokens", "temperature", "seed", "answer", "choices",
          "stop", "system", "deadline"}


def batch(
    model: Optional[str] = opt.MODEL,
    backend: str = opt.BACKEND,
    strategy: Optional[str] = opt.STRATEGY,
    samples: Optional[int] = opt.SAMPLES,
    temperature: Optional[float] = opt.TEMPERATURE,
    top_k: int = opt.TOP_K,
    top_p: float = opt.TOP_P,
    min_p: float = opt.MIN_P,
    max_tokens: int = opt.MAX_TOKENS,
    seed: int = opt.SEED,
    threads: Optional[int] = opt.THREADS,
    gpu_layers: Optional[int] = opt.GPU_LAYERS,
    answer: str = opt.ANSWER,
    system: Optional[str] = opt.SYSTEM,
    raw: bool = opt.RAW,
    deadline: Optional[str] = opt.DEADLINE,
    memory: Optional[str] = opt.MEMORY,
) -> None:
    """Answer JSONL queries from stdin, one JSON result per line on stdout, in input order."""
    from edgescale.api import Runtime

    defaults: dict[str, Any] = dict(
        strategy=strategy, samples=samples, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        max_tokens=max_tokens, seed=seed, answer=answer, stop=(), system=system, raw=raw, deadline=deadline,
        memory=memory,
    )
    opt.ask_settings(**defaults)  # bad defaults fail before the model loads
    failures = 0
    with Runtime.load(model, backend=backend, threads=threads, n_gpu_layers=gpu_layers) as rt:
        rt.notify = lambda msg: typer.echo(msg, err=True)
        for n, line in enumerate(sys.stdin, start=1):
            if not line.strip():
                continue
            record: dict[str, Any]
            item_id: Any = None
            try:
                item = _parse_line(line, n)
                item_id = item.get("id")
                settings = opt.ask_settings(**_merge(defaults, item))
                result = rt.ask(_prompt(item, n), strategy=settings.strategy, budget=settings.budget,
                                options=settings.options)
                record = {"id": item_id, "ok": True, **result.to_dict()}
            except EdgescaleError as exc:
                failures += 1
                record = {"id": item_id, "line": n, "ok": False, "error": str(exc)}
            print_json(record)
    if failures:
        typer.echo(f"error: {failures} line(s) failed; see their error records", err=True)
        raise typer.Exit(1)


def _parse_line(line: str, n: int) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"line {n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(item, dict):
        raise UsageError(f"line {n}: expected a JSON object")
    unknown = sorted(set(item) - _KNOWN)
    if unknown:
        raise UsageError(f"line {n}: unknown field(s) {', '.join(unknown)}")
    return item


def _prompt(item: dict[str, Any], n: int) -> str:
    prompt = item.get("prompt", item.get("question"))
    if not isinstance(prompt, str):
        raise UsageError(f"line {n}: needs a string \"prompt\"")
    return prompt


def _typed(item: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    if key not in item or item[key] is None:
        return default
    value = item[key]
    if isinstance(value, bool) and kind is not bool:
        raise UsageError(f"field {key!r} has the wrong type")
    if not isinstance(value, kind):
        raise UsageError(f"field {key!r} has the wrong type")
    return value


def _merge(defaults: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    out["strategy"] = _typed(item, "strategy", str, defaults["strategy"])
    out["samples"] = _typed(item, "k", int, defaults["samples"])
    out["max_tokens"] = _typed(item, "max_tokens", int, defaults["max_tokens"])
    out["temperature"] = _typed(item, "temperature", (int, float), defaults["temperature"])
    out["seed"] = _typed(item, "seed", int, defaults["seed"])
    out["answer"] = _typed(item, "answer", str, defaults["answer"])
    out["system"] = _typed(item, "system", str, defaults["system"])
    out["deadline"] = _typed(item, "deadline", (str, int, float), defaults["deadline"])
    if out["deadline"] is not None:
        out["deadline"] = str(out["deadline"])
    stop = _typed(item, "stop", (list, str), [])
    out["stop"] = [stop] if isinstance(stop, str) else stop
    choices = _typed(item, "choices", list, [])
    if not all(isinstance(x, str) for x in [*out["stop"], *choices]):
        raise UsageError("fields 'stop' and 'choices' must hold strings")
    out["choices"] = choices
    if out["samples"] is not None and not 1 <= out["samples"] <= 64:
        raise UsageError("field 'k' must be between 1 and 64")
    if not 1 <= out["max_tokens"] <= 32768:
        raise UsageError("field 'max_tokens' must be between 1 and 32768")
    if out["temperature"] is not None and not 0 <= out["temperature"] <= 5:
        raise UsageError("field 'temperature' must be between 0 and 5")
    if out["seed"] < 0:
        raise UsageError("field 'seed' must be >= 0")
    return out
