"""Pure ASGI middlewares: request body cap (413) and Prometheus request metrics."""

from __future__ import annotations

import json
import time
from typing import Any

from vecrag.serve.metrics import ServeMetrics

Scope = dict[str, Any]


async def _send_json(send: Any, status: int, detail: str, extra_headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413, before the app sees them.

    A declared ``Content-Length`` over the cap is refused without reading anything; otherwise (chunked or
    lying clients) the body is read here, counting bytes, and refused as soon as the count passes the cap.
    An accepted body is replayed to the app, so memory per request is bounded by the cap.
    """

    def __init__(self, app: Any, max_bytes: int, metrics: ServeMetrics | None = None):
        self.app = app
        self.max_bytes = int(max_bytes)
        self.metrics = metrics

    async def _reject(self, send: Any, status: int, detail: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels("body_too_large" if status == 413 else "bad_length").inc()
        await _send_json(send, status, detail)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    await self._reject(send, 400, "invalid Content-Length header")
                    return
        too_big = f"request body larger than {self.max_bytes} bytes"
        if declared is not None and declared > self.max_bytes:
            await self._reject(send, 413, too_big)
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            if msg["type"] != "http.request":
                continue
            body = msg.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await self._reject(send, 413, too_big)
                return
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        payload = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": payload, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class MetricsMiddleware:
    """Count requests and time them per endpoint (the route template, so /api/runs/{name} is one label)."""

    def __init__(self, app: Any, metrics: ServeMetrics, known_paths: set[str]):
        self.app = app
        self.metrics = metrics
        self.known = known_paths

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(msg: dict[str, Any]) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = int(msg["status"])
            await send(msg)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.inflight.dec()
            route = scope.get("route")
            path = scope.get("path", "")
            endpoint = getattr(route, "path", None) or (path if path in self.known else "other")
            self.metrics.requests.labels(endpoint, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
