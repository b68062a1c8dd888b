"""Prometheus metrics of one app: HTTP requests, episodes, verdicts, retries, latency, writer counters.

``create_app`` makes one ``Metrics`` (its own registry, so several apps can live in one process)
and installs ``MetricsMiddleware``, which counts every HTTP request by route template, method and
status and times it (streams: until the last frame). The chat route reports episodes, verdicts,
retries, rejections and upstream errors through the ``record_*`` methods. Writer counters and
engine health are read at scrape time through callables. ``GET /metrics`` renders ``render()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.loop import Outcome

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
WRITER_COUNTERS = ("queued", "written", "spooled", "replayed", "dropped", "invalid", "spool_skipped", "overflowed")


class _StateCollector(Collector):
    """Writer counters and engine health, read when Prometheus scrapes."""

    def __init__(self, writer_stats: Callable[[], dict[str, Any]], engine_up: Callable[[], bool]) -> None:
        self._writer_stats = writer_stats
        self._engine_up = engine_up

    def collect(self) -> Iterable[Metric]:
        stats = self._writer_stats()
        records = CounterMetricFamily(
            "rrr_writer_records", "Episode records by what the writer did with them", labels=["state"]
        )
        for name in WRITER_COUNTERS:
            records.add_metric([name], float(stats.get(name, 0)))
        yield records
        yield GaugeMetricFamily(
            "rrr_writer_queue_depth", "Episode records waiting for the writer", value=float(stats.get("queue_depth", 0))
        )
        yield GaugeMetricFamily(
            "rrr_writer_degraded",
            "1 while the database is unreachable and records are spooled",
            value=1.0 if stats.get("degraded") else 0.0,
        )
        yield GaugeMetricFamily(
            "rrr_engine_up",
            "1 while at least one engine replica takes traffic",
            value=1.0 if self._engine_up() else 0.0,
        )


class Metrics:
    """The app's metrics; every series is prefixed ``rrr_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "rrr_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "rrr_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("rrr_http_requests_in_flight", "HTTP requests being served", registry=r)
        self.episodes = Counter("rrr_episodes", "Chat requests by episode status", ["status"], registry=r)
        self.episode_seconds = Histogram(
            "rrr_episode_duration_seconds",
            "Reflect/retry loop latency per request",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.verdicts = Counter("rrr_verdicts", "Verifier verdicts by attempt kind", ["kind", "ok"], registry=r)
        self.failures = Counter(
            "rrr_verdict_failures", "Failed verdicts by attempt kind and failure code", ["kind", "code"], registry=r
        )
        self.retries = Counter("rrr_retries", "Reflect-and-retry rounds started", registry=r)
        self.model_calls = Counter("rrr_model_calls", "Model calls by kind", ["kind"], registry=r)
        self.rejected = Counter(
            "rrr_rejected_requests", "Chat requests refused before any model call, by limit", ["reason"], registry=r
        )
        self.upstream_errors = Counter(
            "rrr_upstream_errors", "Requests that ended on an engine failure", ["kind"], registry=r
        )
        self.stream_errors = Counter("rrr_stream_errors", "Streams that ended with an error event", registry=r)

    def attach(self, writer_stats: Callable[[], dict[str, Any]], engine_up: Callable[[], bool]) -> None:
        self.registry.register(_StateCollector(writer_stats, engine_up))

    def record_outcome(self, outcome: Outcome) -> None:
        self.episodes.labels(outcome.status).inc()
        self.episode_seconds.observe(outcome.latency_ms / 1000.0)
        for attempt in outcome.attempts:
            self.model_calls.labels(attempt.kind).inc()
            if attempt.kind == "reflection":
                self.retries.inc()
            if attempt.verdict is not None:
                self.verdicts.labels(attempt.kind, "true" if attempt.verdict.ok else "false").inc()
                if not attempt.verdict.ok:
                    self.failures.labels(attempt.kind, attempt.verdict.code or "unknown").inc()
        if outcome.error is not None:
            self.upstream_errors.labels(type(outcome.error).__name__).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (``unmatched`` for 404s)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, scope.get("method", ""), str(status)).inc()
            self.metrics.request_seconds.labels(template).observe(time.perf_counter() - started)
