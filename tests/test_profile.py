"""Device profile: the step-time table, the latency model, calibration and its disk cache."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgescale.devices import profile as prof_mod
from edgescale.devices.profile import (
    DeviceProfile,
    cache_path,
    calibrate,
    engine_identity,
    load_or_calibrate,
    load_profile,
    model_key,
    profile_from_dict,
    profile_to_dict,
    save_profile,
)
from edgescale.errors import UsageError
from edgescale.runtime.engine import DecodeSession

SHORT: dict[str, Any] = {
    "ks": (1, 2),
    "new_tokens": 4,
    "prompt_tokens": 16,
    "long_prompt_tokens": 40,
    "repeats": 1,
}
CACHE_RUN: dict[str, Any] = {**SHORT, "long_prompt_tokens": 0}  # no context terms needed


def synthetic(step_s: dict[int, float], **kw: Any) -> DeviceProfile:
    base = DeviceProfile(
        model_key="m-1-abc",
        backend="llama.cpp",
        backend_version="0.3.36",
        n_threads=2,
        prefill_tok_s=1000.0,
        step_s=step_s,
        created="2025-01-01T00:00:00+00:00",
    )
    return replace(base, **kw)


# -- the table ---------------------------------------------------------------------------
TABLE = {1: 0.010, 2: 0.012, 4: 0.020, 8: 0.050}


@pytest.mark.parametrize(
    ("table", "k", "expected"),
    [
        (TABLE, 1, 0.010),  # measured
        (TABLE, 8, 0.050),
        (TABLE, 3, 0.016),  # halfway between 2 and 4
        (TABLE, 6, 0.035),
        (TABLE, 10, 0.065),  # extrapolated along the 4 -> 8 slope (7.5 ms per k)
        (TABLE, 16, 0.110),
        ({2: 0.012, 4: 0.020}, 1, 0.008),  # below the table, along the first slope
        ({2: 0.012, 4: 0.040}, 1, 0.006),  # ... but never below proportional to k
        ({1: 0.010, 2: 0.009}, 4, 0.009),  # a noisy negative slope is not extrapolated
        ({4: 0.020}, 8, 0.040),  # one point: proportional above
        ({4: 0.020}, 2, 0.020),  # ... and flat below
    ],
)
def test_step_time_table(table: dict[int, float], k: int, expected: float) -> None:
    assert synthetic(table).step_time(k) == pytest.approx(expected)


def test_step_time_rejects_bad_k() -> None:
    with pytest.raises(UsageError):
        synthetic(TABLE).step_time(0)


@given(
    st.dictionaries(st.integers(1, 32), st.floats(0.001, 0.05), min_size=1, max_size=6),
)
def test_step_time_is_monotone_for_monotone_tables(raw: dict[int, float]) -> None:
    # Make the table increasing in k, as measurements on any device are up to noise.
    ks = sorted(raw)
    total, table = 0.0, {}
    for k in ks:
        total += raw[k]
        table[k] = total
    prof = synthetic(table)
    times = [prof.step_time(k) for k in range(1, 65)]
    assert all(t > 0 for t in times)
    assert all(b >= a - 1e-12 for a, b in zip(times, times[1:]))


def test_predict_is_prefill_plus_steps() -> None:
    prof = synthetic({1: 0.01, 8: 0.05})
    assert prof.predict(prompt_tokens=100, k=8, new_tokens=50) == pytest.approx(0.1 + 50 * 0.05)
    assert prof.predict(prompt_tokens=100, k=8, new_tokens=0) == pytest.approx(0.1)


def test_predict_context_terms() -> None:
    prof = synthetic(
        {1: 0.01, 8: 0.05},
        cell_s=1e-6,
        prefill_cell_s=1e-6,
        ref_prompt_tokens=128,
        ref_new_tokens=24,
    )
    # Prefill 1000/1000 + 1e-6 * 1000**2; each step attends to 1000 + 50 cells,
    # 910 past the reference 128 + 24/2.
    expected = 1.0 + 1.0 + 100 * (0.05 + 1e-6 * 8 * 910)
    assert prof.predict(prompt_tokens=1000, k=8, new_tokens=100) == pytest.approx(expected)
    # Shorter than the calibration context: no discount below the measured step time.
    assert prof.step_time(8, cells=10) == pytest.approx(0.05)


def test_profile_json_round_trip_and_validation(tmp_path: Path) -> None:
    prof = synthetic(TABLE, cell_s=2e-6, extra={"prefill_s": 0.1})
    back = profile_from_dict(json.loads(json.dumps(profile_to_dict(prof))))
    assert back == prof and list(back.step_s) == [1, 2, 4, 8]
    path = tmp_path / "p.json"
    save_profile(prof, path)
    assert load_profile(path) == prof
    path.write_text("{not json")
    assert load_profile(path) is None
    bad = profile_to_dict(prof)
    bad["step_s"] = {"1": -0.5}
    with pytest.raises(UsageError):
        profile_from_dict(bad)
    with pytest.raises(UsageError):
        profile_from_dict({"backend": "llama.cpp"})


# -- identity --------------------------------------------------------------------------------
def test_model_key_changes_with_the_file(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + bytes(100))
    k1 = model_key(f)
    assert k1 == model_key(f) and k1.startswith("m.gguf-104-")
    st_ = f.stat()
    os.utime(f, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000_000))
    k2 = model_key(f)
    assert k2 != k1
    f.write_bytes(b"GGUF" + bytes(99) + b"\x01")  # same size, new content
    os.utime(f, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000_000))
    assert model_key(f) != k2


def test_cache_path_under_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    p = cache_path("m-1-abc", "llama.cpp", 2)
    assert p.parent == tmp_path / "edgescale" / "profiles" and p.suffix == ".json"
    assert cache_path("m-1-abc", "llama.cpp", 1) != p  # thread count is part of the identity
    assert cache_path("m-1-abc", "llama.cpp", 2, n_gpu_layers=10) != p


# -- real model ------------------------------------------------------------------------------
class EngineAt:
    """The session's engine presented as if loaded from another path (a copy of the model)."""

    def __init__(self, engine: Any, path: Path) -> None:
        self._engine = engine
        self.info = replace(engine.info, path=path)
        self.backend_name: str = engine.backend_name
        self.n_threads: int = engine.n_threads
        self.backend_version: str = engine.backend_version
        self.n_gpu_layers: int = engine.n_gpu_layers
        self.max_sequences: int = engine.max_sequences
        self.memory_layout = engine.memory_layout
        self.baseline_anon_bytes: int = engine.baseline_anon_bytes

    def tokenize(
        self, text: str, *, add_special: bool = False, parse_special: bool = True
    ) -> list[int]:
        return self._engine.tokenize(text, add_special=add_special, parse_special=parse_special)

    def token_bytes(self, token: int) -> bytes:
        return self._engine.token_bytes(token)

    def is_eog(self, token: int) -> bool:
        return self._engine.is_eog(token)

    def format_prompt(
        self, prompt: str, *, chat: bool = True, system: str | None = None
    ) -> list[int]:
        return self._engine.format_prompt(prompt, chat=chat, system=system)

    def session(self, *, n_seqs: int, n_cells: int, max_batch: int) -> DecodeSession:
        return self._engine.session(n_seqs=n_seqs, n_cells=n_cells, max_batch=max_batch)

    def weights_bytes(self) -> int:
        return self._engine.weights_bytes()

    def close(self) -> None:
        """Owns nothing."""


@pytest.fixture(scope="module")
def engine1(model_path: Path) -> Iterator[Any]:
    """One thread: two llama.cpp threads stall each other when the shared box is busy."""
    from edgescale.runtime.llama_engine import LlamaCppEngine

    eng = LlamaCppEngine.load(model_path, n_threads=1)
    yield eng
    eng.close()


@pytest.fixture
def model_copy(tmp_path: Path, model_path: Path) -> Path:
    dst = tmp_path / "model.gguf"
    shutil.copyfile(model_path, dst)
    return dst


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[DeviceProfile]]:
    """Record every calibration load_or_calibrate runs (still the real measurement)."""
    made: list[DeviceProfile] = []
    real = prof_mod.calibrate

    def counting(engine: Any, **kw: Any) -> DeviceProfile:
        prof = real(engine, **kw)
        made.append(prof)
        return prof

    monkeypatch.setattr(prof_mod, "calibrate", counting)
    yield made


def test_calibrate_real_model(engine1: Any, model_path: Path) -> None:
    engine = engine1
    prof = calibrate(engine, **SHORT)
    assert set(prof.step_s) == {1, 2}
    assert all(0 < s < 10 for s in prof.step_s.values())
    assert 1 < prof.prefill_tok_s < 1e6
    assert prof.cell_s >= 0 and prof.prefill_cell_s >= 0
    assert (prof.backend, prof.n_threads, prof.n_gpu_layers) == ("llama.cpp", engine.n_threads, 0)
    assert prof.backend_version == engine.backend_version
    assert prof.model_key == model_key(model_path)
    assert datetime.fromisoformat(prof.created).tzinfo is not None
    assert (prof.ref_prompt_tokens, prof.ref_new_tokens) == (16, 4)
    short = prof.predict(prompt_tokens=16, k=2, new_tokens=4)
    assert 0 < short < prof.predict(prompt_tokens=16, k=2, new_tokens=40)


def test_calibrate_rejects_what_does_not_fit(engine1: Any) -> None:
    with pytest.raises(UsageError):
        calibrate(engine1, ks=(0,))
    with pytest.raises(UsageError):
        calibrate(engine1, ks=(64,), new_tokens=200, prompt_tokens=16)  # 64 x 201 cells > 8192


def test_cache_round_trip_and_invalidation(
    engine1: Any,
    model_copy: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    counted: list[DeviceProfile],
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    engine = engine1
    view = EngineAt(engine, model_copy)
    first = load_or_calibrate(view, **CACHE_RUN)
    key, backend, version, threads, layers = engine_identity(view)
    path = cache_path(key, backend, threads, layers)
    assert path.is_file() and path.is_relative_to(tmp_path / "cache" / "edgescale" / "profiles")
    assert len(counted) == 1

    assert load_or_calibrate(view, **CACHE_RUN) == first  # from disk
    assert len(counted) == 1
    more = load_or_calibrate(view, **{**CACHE_RUN, "ks": (1, 2, 3)})  # asks for a k not cached
    assert more.step_s.keys() == {1, 2, 3}
    assert len(counted) == 2

    st_ = model_copy.stat()  # touching the model file changes its key
    os.utime(model_copy, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000_000))
    touched = load_or_calibrate(view, **CACHE_RUN)
    assert len(counted) == 3 and touched.model_key != first.model_key

    # A profile written by another backend version is measured again and overwritten.
    new_key = model_key(model_copy)
    new_path = cache_path(new_key, backend, threads, layers)
    save_profile(replace(touched, backend_version="0.0.1"), new_path)
    again = load_or_calibrate(view, **CACHE_RUN)
    assert len(counted) == 4 and again.backend_version == engine.backend_version
    assert load_profile(new_path) == again

    load_or_calibrate(view, refresh=True, **CACHE_RUN)
    assert len(counted) == 5


@pytest.mark.parametrize(
    ("t0", "t1", "expected"),
    [
        (128 * 1e-3 + 1e-7 * 128**2, 512 * 1e-3 + 1e-7 * 512**2, (1e-3, 1e-7)),  # exact curve
        (0.128, 0.400, (1e-3, 0.0)),  # longer prompt cheaper per token: the short rate
        (0.001, 5.0, (5.0 / 512, 0.0)),  # no positive linear part: the slower rate
    ],
)
def test_prefill_fit(t0: float, t1: float, expected: tuple[float, float]) -> None:
    a, q = prof_mod._fit_prefill(128, t0, 512, t1)
    assert (a, q) == pytest.approx(expected)
