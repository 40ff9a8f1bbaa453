"""What each KV cache type costs a model, as measured on this device, and the bound a lossy
type must stay within before ``--kv-type auto`` may choose it.

The measurement (``evals.quality.kv_type_cost``: teacher-forced against an f16 cache over
the fixed evaluation text) is made by ``edgescale devices --calibrate`` and kept next to
the speed profiles, one file per model file and backend. The bound is stored with it:
the perplexity of the text may rise by at most ``max_ppl_ratio`` (default 1%; the top-1
agreement is kept for reports: on a near-tie a harmless rounding flips the argmax).
Nothing measured: no lossy type is chosen.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from edgescale.models.catalog import cache_dir
from edgescale.runtime.engine import Engine
from edgescale.runtime.kv_types import KvType

DEFAULT_MAX_PPL_RATIO = 1.01  # a lossy KV type may cost at most 1% perplexity on the evaluation text
CALIBRATED_TYPES = ("q8_0", "q4_0")  # what `devices --calibrate` measures


@dataclass(frozen=True)
class KvCosts:
    """Measured costs of KV types for one model file on one backend."""

    model_key: str
    backend: str
    costs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # type -> KvTypeCost.to_dict()
    max_ppl_ratio: float = DEFAULT_MAX_PPL_RATIO
    created: str = ""

    def ppl_ratio(self, kv: KvType) -> float | None:
        cost = self.costs.get(kv.name)
        if cost is None:
            return None
        import math

        return math.exp(float(cost["nll"]) - float(cost["nll_f16"]))

    def refusal(self, kv: KvType) -> str | None:
        """Why auto may not choose ``kv`` (None: lossless, or measured within the bound)."""
        if not kv.lossy:
            return None
        ratio = self.ppl_ratio(kv)
        if ratio is None:
            return f"{kv.name} is not measured for this model here (`edgescale devices --calibrate` measures it)"
        if ratio > self.max_ppl_ratio:
            bound = 100 * (self.max_ppl_ratio - 1)
            return f"{kv.name} costs {100 * (ratio - 1):.1f}% perplexity, over the {bound:.0f}% bound"
        return None

    def describe(self, kv: KvType) -> str:
        cost = self.costs.get(kv.name)
        ratio = self.ppl_ratio(kv)
        if cost is None or ratio is None:
            return kv.name
        return (f"{kv.name}: perplexity x{ratio:.4f}, top-1 agreement with f16 {float(cost['top1']):.3f} "
                f"over {int(cost['tokens'])} tokens")

    def to_dict(self) -> dict[str, Any]:
        return {"model_key": self.model_key, "backend": self.backend,
                "costs": {k: dict(v) for k, v in self.costs.items()}, "max_ppl_ratio": self.max_ppl_ratio,
                "created": self.created}


def kv_costs_path(model_key: str, backend: str) -> Path:
    return cache_dir() / "kv_costs" / f"{model_key}.{backend.replace('.', '_')}.json"


def load_kv_costs(engine: Engine) -> KvCosts:
    """The costs measured for this engine's model and backend (empty when none are)."""
    from edgescale.devices.profile import model_key

    key = model_key(engine.info.path)
    try:
        raw = json.loads(kv_costs_path(key, engine.backend_name).read_text())
        return KvCosts(model_key=key, backend=engine.backend_name, costs=dict(raw.get("costs", {})),
                       max_ppl_ratio=float(raw.get("max_ppl_ratio", DEFAULT_MAX_PPL_RATIO)),
                       created=str(raw.get("created", "")))
    except (OSError, ValueError, TypeError, AttributeError):
        return KvCosts(model_key=key, backend=engine.backend_name)


def save_kv_costs(engine: Engine, costs: Mapping[str, Mapping[str, Any]],
                  max_ppl_ratio: float = DEFAULT_MAX_PPL_RATIO) -> KvCosts:
    """Store measured costs (merged over what was stored), atomically."""
    old = load_kv_costs(engine)
    merged = KvCosts(model_key=old.model_key, backend=old.backend, costs={**old.costs, **costs},
                     max_ppl_ratio=max_ppl_ratio, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    path = kv_costs_path(merged.model_key, merged.backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(merged.to_dict(), indent=2, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return merged
