"""Measured speed of one model on this device, cached on disk: the planner's latency model.

:func:`calibrate` runs the real :class:`~edgescale.runtime.generate.BatchGenerator`
(prefill once, then batched steps; end-of-generation tokens ignored so every
sequence runs its full length) and records

* ``step_s[k]``: seconds per step with ``k`` live sequences: one step samples a
  token for each (numpy, over the whole vocabulary) and decodes the ``k`` tokens
  in one batch. Median over the steps of a run (robust to other processes
  taking the CPU for a moment), median over runs.
* ``prefill_tok_s`` / ``prefill_cell_s``: prefill time of a P-token prompt is
  ``P / prefill_tok_s + prefill_cell_s * P**2``, fitted through a short and a
  long prompt (the quadratic part is attention; it is 0 when the long prompt
  was not slower per token, or was not measured).
* ``cell_s``: seconds a step costs per sequence per KV cell it attends to,
  beyond the calibration context (from the same short/long pair at the largest k).

The latency model (:meth:`DeviceProfile.predict`)::

    prefill(P)     = P / prefill_tok_s + prefill_cell_s * P**2
    step(k, cells) = step_time(k) + cell_s * k * max(0, cells - ref_cells)
    predict        = prefill(P) + N * step(k, P + N / 2)

``cells`` is the KV one sequence attends to: its prompt plus half its new
tokens on average; ``ref_cells`` the same for the calibration runs. What it
leaves out: sequences that finish early (the batch shrinks; sum
``step_time(live, cells)`` over steps for that), probes, and on backends whose
attention does not skip other sequences' cells in the unified cache (GPUs) the
growth with k x N. Step times include Python-side sampling, so they hold for
the runtime as it is, not for raw llama.cpp. The N-th step of a sequence
samples without decoding, so ``predict`` errs high by about one decode.

Profiles are cached per model file, backend and thread / GPU-layer setting
(:func:`cache_path`); :func:`load_or_calibrate` measures again when the model
file changes (:func:`model_key`) or the backend version differs.

On CPU batching helps little (this 2-core box, raw llama.cpp, SmolLM2 Q4_1:
8.8 ms a step at k=1, 51.5 ms at k=8); on a GPU a lot: ``step_time`` is
measured, never assumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from edgescale.errors import UsageError
from edgescale.models.catalog import cache_dir
from edgescale.runtime.engine import Engine
from edgescale.runtime.generate import BatchGenerator, GenerationConfig

log = logging.getLogger("edgescale.devices")

SCHEMA = 1
DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8, 16)
KEY_HASH_BYTES = 1 << 20  # the first MiB of the model file goes into its key
_FILLER = (
    "Edge devices run small language models under tight memory and latency budgets. "
    "A runtime can spend extra compute at test time: it draws several samples of an answer, "
    "stops early when they agree, and votes. Each sample shares the prompt's cache. "
)


@dataclass(frozen=True)
class DeviceProfile:
    model_key: str
    backend: str
    backend_version: str
    n_threads: int
    prefill_tok_s: float
    step_s: dict[int, float]  # batch size k -> seconds per step (k tokens), sorted by k
    created: str  # ISO 8601, UTC
    n_gpu_layers: int = 0
    prefill_cell_s: float = 0.0  # quadratic prefill term (seconds per token squared)
    cell_s: float = 0.0  # seconds per sequence per attended KV cell beyond ref_cells
    ref_prompt_tokens: int = 0  # calibration prompt length
    ref_new_tokens: int = 0  # calibration tokens per sequence
    extra: dict[str, float] = field(default_factory=dict)  # raw measurements, for reports
    measured: bool = True  # False: devices.estimate's conservative guess, not a measurement

    def __post_init__(self) -> None:
        steps = {int(k): float(v) for k, v in sorted(self.step_s.items())}
        object.__setattr__(self, "step_s", steps)

    @property
    def ref_cells(self) -> float:
        return self.ref_prompt_tokens + self.ref_new_tokens / 2

    def step_time(self, k: int, cells: float | None = None) -> float:
        """Seconds per step with ``k`` live sequences (``cells``: KV each attends to;
        None = the calibration context).

        Linear between measured batch sizes; beyond them linear from the nearest
        two. Above the largest k the time never falls below that k's (a noisy
        negative slope is not trusted); below the smallest it stays between "free
        batching" (the smallest k's time) and "no batching gain" (proportional to
        k). One measured point: proportional to k above it, equal to it below.
        """
        if k < 1:
            raise UsageError(f"batch size must be >= 1, got {k}")
        if not self.step_s:
            raise UsageError("profile has no step times")
        base = self._table(k)
        if cells is None or self.cell_s <= 0:
            return base
        return base + self.cell_s * k * max(0.0, cells - self.ref_cells)

    def _table(self, k: int) -> float:
        pts = list(self.step_s.items())
        if k in self.step_s:
            return self.step_s[k]
        if len(pts) == 1:
            k0, s0 = pts[0]
            return s0 * k / k0 if k > k0 else s0
        if k < pts[0][0]:
            (k1, s1), (k2, s2) = pts[0], pts[1]
            guess = s1 + (s2 - s1) / (k2 - k1) * (k - k1)
            return min(max(guess, s1 * k / k1), s1)
        if k > pts[-1][0]:
            (k1, s1), (k2, s2) = pts[-2], pts[-1]
            return max(s2 + (s2 - s1) / (k2 - k1) * (k - k2), s2)
        for (k1, s1), (k2, s2) in zip(pts, pts[1:]):
            if k1 < k < k2:
                return s1 + (s2 - s1) * (k - k1) / (k2 - k1)
        raise AssertionError("unreachable: k lies between two measured points")

    def prefill_time(self, prompt_tokens: int) -> float:
        if prompt_tokens < 0:
            raise UsageError("prompt_tokens must be >= 0")
        return prompt_tokens / self.prefill_tok_s + self.prefill_cell_s * prompt_tokens**2

    def predict(self, *, prompt_tokens: int, k: int, new_tokens: int) -> float:
        """Seconds to prefill ``prompt_tokens`` and run ``new_tokens`` steps of ``k`` sequences
        (every sequence runs to ``new_tokens``; see the module docstring for the model)."""
        if new_tokens < 0:
            raise UsageError("new_tokens must be >= 0")
        cells = prompt_tokens + new_tokens / 2
        return self.prefill_time(prompt_tokens) + new_tokens * self.step_time(k, cells)

    def matches(
        self,
        *,
        model_key: str,
        backend: str,
        backend_version: str,
        n_threads: int,
        n_gpu_layers: int,
    ) -> bool:
        return (
            self.model_key == model_key
            and self.backend == backend
            and self.backend_version == backend_version
            and self.n_threads == n_threads
            and self.n_gpu_layers == n_gpu_layers
        )


def profile_to_dict(profile: DeviceProfile) -> dict[str, Any]:
    out = asdict(profile)
    out["step_s"] = {str(k): v for k, v in profile.step_s.items()}
    out["schema"] = SCHEMA
    return out


def profile_from_dict(data: Mapping[str, Any]) -> DeviceProfile:
    """Inverse of :func:`profile_to_dict`; raises UsageError on anything unusable."""
    try:
        if int(data.get("schema", SCHEMA)) != SCHEMA:
            raise UsageError(f"profile schema {data.get('schema')!r} is not {SCHEMA}")
        steps = {int(k): float(v) for k, v in dict(data["step_s"]).items()}
        prof = DeviceProfile(
            model_key=str(data["model_key"]),
            backend=str(data["backend"]),
            backend_version=str(data["backend_version"]),
            n_threads=int(data["n_threads"]),
            prefill_tok_s=float(data["prefill_tok_s"]),
            step_s=steps,
            created=str(data["created"]),
            n_gpu_layers=int(data.get("n_gpu_layers", 0)),
            prefill_cell_s=float(data.get("prefill_cell_s", 0.0)),
            cell_s=float(data.get("cell_s", 0.0)),
            ref_prompt_tokens=int(data.get("ref_prompt_tokens", 0)),
            ref_new_tokens=int(data.get("ref_new_tokens", 0)),
            extra={str(k): float(v) for k, v in dict(data.get("extra") or {}).items()},
            measured=bool(data.get("measured", True)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"not a device profile: {exc!r}") from None
    numbers = [prof.prefill_tok_s, *prof.step_s.values()]
    usable = all(math.isfinite(x) and x > 0 for x in numbers)
    if not prof.step_s or min(prof.step_s) < 1 or not usable:
        raise UsageError("device profile has no usable step times or prefill speed")
    if prof.cell_s < 0 or prof.prefill_cell_s < 0:
        raise UsageError("device profile has negative context costs")
    return prof


# -- identity and cache ----------------------------------------------------------
def model_key(path: str | os.PathLike[str]) -> str:
    """``<file name>-<size>-<digest>``; the digest covers the resolved path, size,
    modification time and a SHA-256 of the first MiB, so an edited, replaced or
    touched file gets a new key."""
    p = Path(path).resolve()
    st = p.stat()
    with p.open("rb") as fh:
        head = hashlib.sha256(fh.read(KEY_HASH_BYTES)).hexdigest()
    material = f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0{head}"
    return f"{p.name}-{st.st_size}-{hashlib.sha256(material.encode()).hexdigest()[:16]}"


def cache_path(key: str, backend: str, n_threads: int, n_gpu_layers: int = 0) -> Path:
    """``$XDG_CACHE_HOME/edgescale/profiles/<hash>.json``, one file per model file,
    backend and thread / GPU-layer setting (the backend version is checked on load)."""
    material = f"{key}\0{backend}\0{n_threads}\0{n_gpu_layers}"
    digest = hashlib.sha256(material.encode()).hexdigest()[:24]
    return cache_dir() / "profiles" / f"{digest}.json"


def load_profile(path: Path) -> DeviceProfile | None:
    """The profile stored at ``path``, or None when missing or unreadable."""
    try:
        return profile_from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, UsageError):
        return None


def save_profile(profile: DeviceProfile, path: Path) -> None:
    """Write atomically (a concurrent reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(profile_to_dict(profile), indent=2, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def engine_identity(engine: Engine) -> tuple[str, str, str, int, int]:
    """(model key, backend, backend version, threads, GPU layers) of a loaded engine."""
    return (model_key(engine.info.path), engine.backend_name, engine.backend_version, engine.n_threads,
            engine.n_gpu_layers)


def cached_profile(engine: Engine, ks: Sequence[int] = DEFAULT_KS) -> DeviceProfile | None:
    """The measured profile cached for this engine, if it matches (model file, backend and
    version, threads, GPU layers) and measured every k in ``ks``; None otherwise."""
    key, backend, version, threads, layers = engine_identity(engine)
    cached = load_profile(cache_path(key, backend, threads, layers))
    if cached is None or not cached.matches(model_key=key, backend=backend, backend_version=version,
                                            n_threads=threads, n_gpu_layers=layers):
        return None
    return cached if all(k in cached.step_s for k in ks) else None


def load_or_calibrate(
    engine: Engine,
    *,
    refresh: bool = False,
    ks: Sequence[int] = DEFAULT_KS,
    new_tokens: int = 24,
    prompt_tokens: int = 128,
    long_prompt_tokens: int = 512,
    repeats: int = 3,
) -> DeviceProfile:
    """The cached profile for this engine (see :func:`cached_profile`), else a fresh
    calibration (then cached). ``refresh``: measure again in any case."""
    cached = None if refresh else cached_profile(engine, ks)
    if cached is not None:
        return cached
    key, backend, version, threads, layers = engine_identity(engine)
    path = cache_path(key, backend, threads, layers)
    prof = calibrate(
        engine,
        ks=ks,
        new_tokens=new_tokens,
        prompt_tokens=prompt_tokens,
        long_prompt_tokens=long_prompt_tokens,
        repeats=repeats,
    )
    try:
        save_profile(prof, path)
    except OSError as exc:  # a read-only cache costs a recalibration next time, nothing more
        log.warning("could not cache the device profile at %s: %s", path, exc)
    return prof


# -- measuring -------------------------------------------------------------------
@dataclass(frozen=True)
class _Run:
    prefill_s: float
    step_s: float  # median over the run's steps


def _prompt(engine: Engine, n: int) -> list[int]:
    tokens: list[int] = []
    chunk = engine.tokenize(_FILLER)
    if not chunk:
        raise UsageError("the model's tokenizer returned no tokens for the calibration text")
    while len(tokens) < n:
        tokens.extend(chunk)
    return tokens[:n]


def _run(
    engine: Engine, prompt: Sequence[int], k: int, steps: int, clock: Callable[[], float]
) -> _Run:
    config = GenerationConfig(max_new_tokens=steps + 1, seed=1234, ignore_eos=True)
    with BatchGenerator(engine, prompt, config, n_seqs=k, clock=clock) as gen:
        times: list[float] = []
        for _ in range(steps):
            t0 = clock()
            gen.step()
            times.append(clock() - t0)
        return _Run(gen.stats.prefill_s, statistics.median(times))


def _fit_prefill(p0: int, t0: float, p1: int, t1: float) -> tuple[float, float]:
    """(seconds per token, seconds per token squared) through two prefill timings."""
    a0 = t0 / p0
    if p1 <= p0:
        return a0, 0.0
    q = (t1 / p1 - a0) / (p1 - p0)
    a = a0 - q * p0
    if q <= 0 or a <= 0:  # no usable curve: the slower of the two per-token rates, linear
        return max(a0, t1 / p1), 0.0
    return a, q


def calibrate(
    engine: Engine,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    new_tokens: int = 24,
    prompt_tokens: int = 128,
    long_prompt_tokens: int = 512,
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> DeviceProfile:
    """Measure prefill speed and step time per batch size with the real step loop.

    Runs: one warm-up, then ``repeats`` runs per k (``prompt_tokens`` prompt,
    ``new_tokens`` steps), then ``repeats`` runs at the largest k with a
    ``long_prompt_tokens`` prompt for the context terms (0 skips them). Takes
    seconds for a 135M model on two cores, minutes for 7B models on a CPU.
    """
    ks = tuple(sorted(set(int(k) for k in ks)))
    if not ks or ks[0] < 1:
        raise UsageError("ks must be batch sizes >= 1")
    if new_tokens < 1 or prompt_tokens < 1 or repeats < 1:
        raise UsageError("new_tokens, prompt_tokens and repeats must be >= 1")
    limit = engine.info.n_ctx_train
    k_max = ks[-1]
    if prompt_tokens + k_max * (new_tokens + 1) >= limit:
        raise UsageError(
            f"calibration needs more than the model's context of {limit} cells; lower ks or tokens"
        )
    long_p = min(long_prompt_tokens, limit - k_max * (new_tokens + 1) - 1)
    base = _prompt(engine, max(prompt_tokens, long_p))
    short = base[:prompt_tokens]
    _run(engine, short, ks[0], min(new_tokens, 4), clock)  # warm-up: page in weights, size buffers

    prefills: list[float] = []
    step_s: dict[int, float] = {}
    for k in ks:
        runs = [_run(engine, short, k, new_tokens, clock) for _ in range(repeats)]
        prefills.extend(r.prefill_s for r in runs)
        step_s[k] = statistics.median(r.step_s for r in runs)
    t0 = statistics.median(prefills)
    a, q, cell_s = t0 / prompt_tokens, 0.0, 0.0
    extra = {"prefill_s": t0}
    if long_p > prompt_tokens:
        runs = [_run(engine, base[:long_p], k_max, new_tokens, clock) for _ in range(repeats)]
        t1 = statistics.median(r.prefill_s for r in runs)
        s1 = statistics.median(r.step_s for r in runs)
        a, q = _fit_prefill(prompt_tokens, t0, long_p, t1)
        cell_s = max(0.0, (s1 - step_s[k_max]) / (k_max * (long_p - prompt_tokens)))
        extra.update({"long_prompt_tokens": float(long_p), "long_prefill_s": t1, "long_step_s": s1})
    return DeviceProfile(
        model_key=model_key(engine.info.path),
        backend=engine.backend_name,
        backend_version=engine.backend_version,
        n_threads=int(engine.n_threads),
        prefill_tok_s=1.0 / a,
        step_s=step_s,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        n_gpu_layers=engine.n_gpu_layers,
        prefill_cell_s=q,
        cell_s=cell_s,
        ref_prompt_tokens=prompt_tokens,
        ref_new_tokens=new_tokens,
        extra=extra,
    )
