"""edgescale: on-device LLM inference with test-time compute strategies.

    from edgescale import Runtime, Budget
    rt = Runtime.load()                       # the embedded default model
    res = rt.ask("What is 17*3?", strategy="maj@8", budget=Budget(deadline_s=2))

Heavy backends load lazily: importing edgescale imports no inference library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AskOptions", "Budget", "Result", "Runtime", "SamplingConfig", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from edgescale.api import AskOptions, Budget, Runtime
    from edgescale.runtime.sampling import SamplingConfig
    from edgescale.strategies.result import Result

_EXPORTS = {
    "AskOptions": "edgescale.api",
    "Budget": "edgescale.api",
    "Runtime": "edgescale.api",
    "SamplingConfig": "edgescale.runtime.sampling",
    "Result": "edgescale.strategies.result",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgescale' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
