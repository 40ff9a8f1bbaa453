"""A conservative speed profile for a model that has not been measured on this device yet.

The planner needs step times to plan a budgeted query; measuring them takes
about a minute (``edgescale devices --calibrate``), far too long to charge to a
query's deadline. Until a measured profile exists, plans use this estimate,
built to err slow so that a plan made from it spends less, not more:

* a decode step at k=1 reads every weight once: ``weights / (1.5 GB/s x threads)``
  plus 2 ms of sampling and bookkeeping (measured here: SmolLM2-135M Q4_1, two
  threads, 8.5 ms a step; the estimate says 35 ms);
* batching helps little: ``step(k) = step(1) x k^0.85`` (measured on CPUs: k=8
  costs 4.8 to 5.3 steps of k=1; the estimate says 5.9);
* the prompt is read at 8 tokens per decode step.

The result says ``measured=False``; the planner notes it, the CLI says so once.
"""

from __future__ import annotations

from datetime import datetime, timezone

from edgescale.devices.profile import DEFAULT_KS, DeviceProfile, engine_identity
from edgescale.runtime.engine import Engine

BYTES_PER_S_PER_THREAD = 1.5e9
STEP_OVERHEAD_S = 0.002
BATCH_EXPONENT = 0.85
PROMPT_TOKENS_PER_STEP = 8


def estimated_profile(engine: Engine) -> DeviceProfile:
    key, backend, version, threads, layers = engine_identity(engine)
    t1 = engine.weights_bytes() / (BYTES_PER_S_PER_THREAD * max(1, threads)) + STEP_OVERHEAD_S
    return DeviceProfile(
        model_key=key, backend=backend, backend_version=version, n_threads=threads,
        prefill_tok_s=PROMPT_TOKENS_PER_STEP / t1,
        step_s={k: t1 * k**BATCH_EXPONENT for k in DEFAULT_KS},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        n_gpu_layers=layers, measured=False,
    )
