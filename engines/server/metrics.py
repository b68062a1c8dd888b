"""Prometheus metrics of the engine server, named as vLLM names them (docs/vllm.md §5.3).

Who calls it: the engine server counts requests and tokens here and serves `render()` at `/metrics`.
Gauges are read from the server's state at scrape time; `vllm:lora_requests_info` carries the
running and waiting adapter names as labels and the time of the last change as its value. Each
server has its own registry, so several servers in one process do not mix their numbers. It does
not time HTTP handling (vLLM's instrumentator series are left out). Two series are rrr's own, not
vLLM's: `rrr_engine_requests_aborted_total{state}` (clients that went away while their request was
`waiting` or `running`) and `rrr_engine_requests_rejected_total{reason="queue_full"}` (503s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "EngineLoad", "ServerMetrics"]


@dataclass
class EngineLoad:
    """What the scheduler is doing now: request counts and the adapters of those requests."""

    running: int = 0
    waiting: int = 0
    running_adapters: list[str] = field(default_factory=list)
    waiting_adapters: list[str] = field(default_factory=list)
    max_loras: int = 1
    changed_at: float = field(default_factory=time.time)


class _LoadCollector:
    def __init__(self, model_name: str, load: Callable[[], EngineLoad]) -> None:
        self.model_name = model_name
        self.load = load

    def collect(self) -> Iterator[Metric]:
        state = self.load()
        labels = ["model_name", "engine"]
        values = [self.model_name, "0"]
        for name, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.", state.running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", state.waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", 0.0),
        ):
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, float(value))
            yield family
        info = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        )
        info.add_metric(
            [str(state.max_loras), ",".join(state.running_adapters), ",".join(state.waiting_adapters)], state.changed_at
        )
        yield info


class ServerMetrics:
    """Counters the server updates per request, plus the scrape-time gauges."""

    def __init__(self, model_name: str, load: Callable[[], EngineLoad]) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name", "engine"]
        self._labels = {"model_name": model_name, "engine": "0"}
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=self.registry
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=self.registry
        )
        self.request_success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=self.registry,
        )
        self.e2e_latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end request latency in seconds.",
            labels,
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
        )
        self.aborted = Counter(
            "rrr_engine_requests_aborted",
            "Requests whose client went away first, by where they were (waiting or running).",
            [*labels, "state"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "rrr_engine_requests_rejected",
            "Requests refused with 503 before any work.",
            [*labels, "reason"],
            registry=self.registry,
        )
        self.registry.register(_LoadCollector(model_name, load))

    def observe(self, *, prompt_tokens: int, completion_tokens: int, finish_reason: str | None, seconds: float) -> None:
        self.prompt_tokens.labels(**self._labels).inc(prompt_tokens)
        self.generation_tokens.labels(**self._labels).inc(completion_tokens)
        self.request_success.labels(**self._labels, finished_reason=finish_reason or "stop").inc()
        self.e2e_latency.labels(**self._labels).observe(seconds)

    def abort(self, state: str) -> None:
        """A client went away while its request was `waiting` for the slot or `running`."""
        self.aborted.labels(**self._labels, state=state).inc()

    def reject(self, reason: str) -> None:
        self.rejected.labels(**self._labels, reason=reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
