"""``GET /metrics``: the scheduler's and the server's counters in Prometheus text format.

Read at scrape time from the scheduler's own bookkeeping (plain Python counters:
reading them does not touch the inference library) through a collector of our
own in a registry of our own (prometheus_client's default registry is a global).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from starlette.responses import Response

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from edgescale.serve.state import ServerState


class _Collector:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = self.state
        c = state.counters
        yield GaugeMetricFamily("edgescale_up", "1 when the model is loaded and serving",
                                value=1.0 if state.status == "ready" else 0.0)
        requests = CounterMetricFamily("edgescale_http_requests", "HTTP requests answered",
                                       labels=["endpoint", "status"])
        for (endpoint, status), n in state.request_counts():
            requests.add_metric([endpoint, str(status)], n)
        yield requests
        yield GaugeMetricFamily("edgescale_http_requests_in_flight", "Completion requests being answered",
                                value=state.in_flight)
        yield CounterMetricFamily("edgescale_completions", "Completion requests answered", value=c.completions)
        yield CounterMetricFamily("edgescale_client_disconnects",
                                  "Clients gone before their answer (their sequences cancelled)",
                                  value=c.disconnects)
        yield CounterMetricFamily("edgescale_queue_full", "Requests refused with 429: the queue was full",
                                  value=c.queue_full)
        runtime = state.runtime
        if runtime is None:
            return
        sched = runtime.scheduler
        st = sched.stats
        used, total = sched.kv_cells()
        yield GaugeMetricFamily("edgescale_queue_length", "Queries waiting for room in the decode loop",
                                value=sched.queued)
        yield GaugeMetricFamily("edgescale_queries_running", "Queries decoding in the shared loop",
                                value=sched.running)
        yield GaugeMetricFamily("edgescale_tokens_per_second", "Sample tokens per second over the last 64 steps",
                                value=st.tokens_per_s())
        yield GaugeMetricFamily("edgescale_kv_cells_used", "KV cells holding tokens (the prefix cache's included)",
                                value=used)
        yield GaugeMetricFamily("edgescale_kv_cells_reserved", "KV cells the running queries hold in reserve",
                                value=sched.reserved_cells())
        yield GaugeMetricFamily("edgescale_kv_cells_prefix_cache",
                                "KV cells the prefix cache's entries span (shared prefixes count once per entry)",
                                value=sched.cache_cells())
        yield GaugeMetricFamily("edgescale_kv_cells_total", "KV cells of the shared context", value=total)
        yield CounterMetricFamily("edgescale_deadline_misses",
                                  "Responses whose deadline hit before they finished (in the queue or decoding)",
                                  value=c.deadline_misses)
        yield CounterMetricFamily("edgescale_prefix_cache_hits", "Prompts that reused cached KV", value=st.cache_hits)
        yield CounterMetricFamily("edgescale_prefix_cache_misses", "Prompts read in full", value=st.cache_misses)
        yield CounterMetricFamily("edgescale_prompt_tokens_read", "Prompt tokens decoded",
                                  value=st.prompt_tokens_read)
        yield CounterMetricFamily("edgescale_prompt_tokens_cached", "Prompt tokens served from the prefix cache",
                                  value=st.prompt_tokens_cached)
        yield CounterMetricFamily("edgescale_tokens_generated", "Sample tokens decoded", value=st.tokens)
        yield CounterMetricFamily("edgescale_decode_steps", "Steps of the shared decode loop", value=st.steps)


def metrics_response(state: ServerState) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(state))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
