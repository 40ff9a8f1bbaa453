"""Every default and limit of a query, in one place.

The CLI, batch lines, the Python API, the planner and the strategy parser all
read these; nothing else hard-codes them.
"""

from __future__ import annotations

# limits a query must stay within (checked once, in edgescale.settings)
MAX_SAMPLES = 64  # sequences one query may sample (k, adaptive max)
MAX_NEW_TOKENS = 32768  # new tokens per sample
MAX_TEMPERATURE = 5.0
MAX_SEED = 2**63 - 1
MAX_PARALLEL = 64  # queries in flight at once in one decode loop (batch --parallel, serve --parallel)

# defaults of a query
DEFAULT_MAX_TOKENS = 256
MULTI_SAMPLE_TEMPERATURE = 0.8  # several samples must differ; one sample is greedy
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_MIN_P = 0.05
DEFAULT_SEED = 0
DEFAULT_K = 8  # samples of a spec written without @K ("maj", "ffs")
# the shared KV cache's element types when none is asked for: f16 unless a memory budget
# would cut the plan and a lossy type measured within its bound lets it fit (devices.kv_costs)
DEFAULT_KV_TYPE = "auto"
