"""Prometheus metrics, one registry per app (several apps in one process, e.g. tests, do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("vecrag_requests", "HTTP requests by endpoint, method and status code",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("vecrag_request_latency_seconds", "Request latency by endpoint (whole request)",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.decisions = Counter("vecrag_decisions", "Dual-path decisions by lane (from /next and /generate)",
                                 ["lane", "decision"], registry=r)
        self.fallbacks = Counter("vecrag_fallbacks", "Decoder fallbacks to NOVEL (retriever error, timeout, "
                                 "empty result) by reason", ["reason"], registry=r)
        self.rejected = Counter("vecrag_rejected", "Requests refused before compute (body too large, busy)",
                                ["reason"], registry=r)
        self.inflight = Gauge("vecrag_inflight_requests", "Requests being handled", registry=r)
        self.bank_vectors = Gauge("vecrag_bank_vectors", "Vectors in the served bank", registry=r)

    def record_decisions(self, steps: list[tuple[str, str, str | None]]) -> None:
        """(lane, decision, fallback reason or None) per decoded step."""
        for lane, decision, fallback in steps:
            self.decisions.labels(lane or "(none)", decision).inc()
            if fallback:
                self.fallbacks.labels(fallback).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
