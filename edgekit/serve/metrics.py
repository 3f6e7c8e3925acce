"""``GET /metrics``: Prometheus text (prometheus_client) over every loaded model's serving counters:
requests, queue depth, running sequences, prompt tokens evaluated and reused, prefix-cache hits,
generated tokens, decode steps, KV cells used, 503s. Collected on each scrape from the runners, so the
numbers are the ones /api/ps shows."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

router = APIRouter()

# (metric, kind, help, key in Runner.stats())
_METRICS = [
    ("edgekit_requests", "counter", "Generation requests admitted", "requests"),
    ("edgekit_requests_rejected", "counter", "Requests refused with 503 (queue full)", "rejected"),
    ("edgekit_queue_depth", "gauge", "Requests waiting for a slot", "queue_depth"),
    ("edgekit_sequences_active", "gauge", "Sequences being generated", "active"),
    ("edgekit_slots", "gauge", "Sequences a model runs at once (--parallel)", "slots"),
    ("edgekit_sequences_finished", "counter", "Sequences that ran to their end", "finished"),
    ("edgekit_sequences_cancelled", "counter", "Sequences removed because their client left", "cancelled"),
    ("edgekit_cancel_lag_steps", "gauge", "Most decode steps a sequence stayed in the batch after its cancel",
     "cancel_lag_steps"),
    ("edgekit_prompt_tokens", "counter", "Prompt tokens received", "prompt_tokens"),
    ("edgekit_prompt_tokens_evaluated", "counter", "Prompt tokens run through the model", "prompt_evaluated"),
    ("edgekit_prompt_tokens_reused", "counter", "Prompt tokens taken from a slot's prefix cache", "prompt_reused"),
    ("edgekit_prefix_hits", "counter", "Requests that reused a cached prefix", "prefix_hits"),
    ("edgekit_generated_tokens", "counter", "Tokens decoded after prompts", "generated"),
    ("edgekit_decode_steps", "counter", "llama_decode calls (one batch each)", "steps"),
    ("edgekit_batch_tokens", "counter", "Tokens over all decode steps", "batch_tokens"),
    ("edgekit_kv_cells_used", "gauge", "KV cache cells holding tokens (active and cached)", "kv_cells"),
    ("edgekit_kv_cells", "gauge", "KV cache cells in the context (parallel x num_ctx)", "kv_cells_total"),
]


class _Collector:
    def __init__(self, models: Any) -> None:
        self.models = models

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rows = [(name, loaded.runner.stats()) for name, loaded in list(self.models.loaded.items())
                if loaded.runner is not None and loaded.runner.engine is not None]
        for metric, kind, doc, key in _METRICS:
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(metric, doc, labels=["model"])
            for name, stats in rows:
                if key in stats:
                    family.add_metric([name], float(stats[key]))
            yield family


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(request.app.state.models))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
