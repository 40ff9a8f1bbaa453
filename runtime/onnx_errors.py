"""The exception types ONNX Runtime raises (plain ``Exception`` subclasses from its bindings)."""

from __future__ import annotations

from functools import lru_cache

_NAMES = (
    "Fail",
    "InvalidArgument",
    "NoSuchFile",
    "NoModel",
    "EngineError",
    "RuntimeException",
    "InvalidProtobuf",
    "ModelLoaded",
    "NotImplemented",
    "InvalidGraph",
    "EPFail",
)


@lru_cache(maxsize=1)
def ort_exceptions() -> tuple[type[BaseException], ...]:
    """What to catch around an onnxruntime call (its own types, plus what Python raises)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    own = tuple(t for t in (getattr(state, n, None) for n in _NAMES) if isinstance(t, type))
    return (*own, RuntimeError, ValueError, OSError)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
