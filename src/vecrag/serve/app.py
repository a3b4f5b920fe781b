"""The vecrag HTTP API and dashboard (FastAPI). Build with :func:`create_app`; `vecrag serve` runs it.

Endpoints: ``POST /search``, ``POST /next``, ``POST /generate``, ``GET /healthz``, ``GET /metrics``
(Prometheus), ``GET /api/runs``, ``GET /api/runs/{name}/log``, ``GET /api/runs/{name}/decode``,
``GET /api/runs/{name}/metrics/{file}``, the dashboard at ``/`` and the OpenAPI docs at ``/docs``.
See :mod:`vecrag.serve.state` for how compute is shared between requests.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from vecrag import __version__
from vecrag.errors import VecragError
from vecrag.runs.layout import LOG, METRICS
from vecrag.serve.decode_views import decode_views, has_decode
from vecrag.serve.metrics import ServeMetrics
from vecrag.serve.middleware import BodyLimitMiddleware, MetricsMiddleware
from vecrag.serve.runs import RunNotFound, read_log, training_views
from vecrag.serve.schemas import (
    GenerateRequest,
    GenerateResponse,
    NextRequest,
    NextResponse,
    SearchRequest,
    SearchResponse,
    check_dim,
    unit_vectors,
)
from vecrag.serve.state import Busy, ServeState, load_state

DEFAULT_MAX_BODY = 4 * 2**20
STATIC = Path(str(resources.files("vecrag.serve") / "static"))
API_PATHS = {"/search", "/next", "/generate", "/healthz", "/metrics", "/", "/docs", "/openapi.json", "/api/runs"}


def _clean_error(err: Any) -> dict[str, Any]:
    """A validation error entry that is always JSON-safe and small (no echo of large or non-finite input)."""
    out = {k: err[k] for k in ("type", "loc", "msg") if k in err}
    out["loc"] = [x if isinstance(x, int | str) else str(x) for x in out.get("loc", [])]
    inp = err.get("input")
    if isinstance(inp, bool | int | str) and len(str(inp)) <= 200:
        out["input"] = inp
    elif isinstance(inp, float):
        out["input"] = inp if math.isfinite(inp) else str(inp)
    return out


def create_app(bank_path: str | Path, lvm: str | Path | None = None, retriever: str | Path | None = None,
               runs_root: str | Path | None = None, max_body_bytes: int = DEFAULT_MAX_BODY, *,
               device: str = "auto", load_text_encoder: bool = True, max_pending: int = 256,
               backend: str = "auto", profiles: str | Path | None = None, timeout_ms: float | None = 50.0,
               state: ServeState | None = None) -> FastAPI:
    """Load the bank, index, encoder and decoder once, and return the app that serves them."""
    st = state or load_state(bank_path, lvm=lvm, retriever=retriever, runs_root=runs_root, device=device,
                             load_text_encoder=load_text_encoder, max_pending=max_pending, backend=backend,
                             profiles=profiles, timeout_ms=timeout_ms)
    metrics = ServeMetrics()
    metrics.bank_vectors.set(st.bank.n)

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        yield
        st.close()

    app = FastAPI(title="vecrag", version=__version__, lifespan=lifespan,
                  description="Search a chunk-embedding bank, predict the next chunk with the dual-path "
                              "decoder, generate, and watch training runs.")
    app.state.vecrag = st
    app.state.metrics = metrics

    @app.exception_handler(VecragError)
    async def _vecrag_error(_: Request, e: VecragError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        # FastAPI's default handler echoes each bad ``input``; a NaN/inf there made json.dumps raise (500)
        return JSONResponse({"detail": [_clean_error(err) for err in e.errors()[:20]]}, status_code=422)

    @app.exception_handler(Busy)
    async def _busy(_: Request, e: Busy) -> JSONResponse:
        metrics.rejected.labels("busy").inc()
        return JSONResponse({"detail": f"server busy: {st.compute.max_pending} requests already queued"},
                            status_code=503, headers={"Retry-After": "1"})

    def _dim_errors(errs: list[dict[str, Any]]) -> None:
        if errs:
            raise RequestValidationError(errs)

    # ---- API ------------------------------------------------------------------------------------------
    @app.post("/search", response_model=SearchResponse, summary="top-k bank chunks for texts or vectors")
    async def search(req: SearchRequest) -> dict[str, Any]:
        t0 = time.perf_counter()
        if req.vectors is not None:
            _dim_errors(check_dim(req.vectors, st.bank.dim))
            q = unit_vectors(req.vectors)
            results = await st.batcher.search(vectors=q, k=req.k)
        else:
            if st.encoder is None:
                raise HTTPException(422, f"this server cannot encode text: {st.encoder_error}; send 'vectors'")
            results = await st.batcher.search(texts=list(req.texts or []), k=req.k)
        return {"k": req.k, "results": results, "took_ms": 1000 * (time.perf_counter() - t0)}

    def _decoder() -> Any:
        if st.decoder is None:
            raise HTTPException(503, f"decoding is not available on this server: {st.decoder_error}")
        return st.decoder

    @app.post("/next", response_model=NextResponse, summary="cascade top-k and the dual-path decision")
    async def next_chunk(req: NextRequest) -> dict[str, Any]:
        t0 = time.perf_counter()
        dec = _decoder()
        if req.context_ids is not None:
            bad = [i for i in req.context_ids if i >= st.bank.n]
            if bad:
                _dim_errors([{"type": "value_error", "loc": ["body", "context_ids"], "input": bad[:5],
                              "msg": f"chunk ids must be < {st.bank.n} (the bank size)"}])
        if req.context_texts is not None and st.encoder is None:
            raise HTTPException(422, f"this server cannot encode text: {st.encoder_error}; send 'context_ids'")
        dec.check_request(req.profile, req.lane)
        out = await st.compute.run(dec.next, req)
        metrics.record_decisions([(out["lane"], out["decision"], out.get("fallback"))])
        return {**out, "took_ms": 1000 * (time.perf_counter() - t0)}

    @app.post("/generate", response_model=GenerateResponse,
              summary="prompt -> decoded steps and the continuation (never repeats a chunk or the prompt)")
    async def generate(req: GenerateRequest) -> dict[str, Any]:
        t0 = time.perf_counter()
        dec = _decoder()
        if st.encoder is None:
            raise HTTPException(422, f"this server cannot encode the prompt: {st.encoder_error}")
        dec.check_request(req.profile, req.lane)
        out = await st.compute.run(dec.generate, req)
        metrics.record_decisions([(s.get("lane", ""), s["decision"], s.get("fallback")) for s in out["steps"]])
        return {**out, "took_ms": 1000 * (time.perf_counter() - t0)}

    @app.get("/healthz", summary="liveness and what is loaded")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, **st.describe()}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prom() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    # ---- dashboard API ----------------------------------------------------------------------------------
    def _run(name: str) -> Any:
        try:
            return st.runs.get(name)
        except RunNotFound:
            raise HTTPException(404, "no such run") from None

    @app.get("/api/runs", summary="run directories under --runs (and the --lvm/--retriever runs)")
    async def list_runs() -> dict[str, Any]:
        return {"root": str(st.runs.root) if st.runs.root else None,
                "runs": [{**r.summary(), "has_decode": has_decode(r)} for r in st.runs.list().values()]}

    @app.get("/api/runs/{name:path}/log", summary="parsed log.jsonl records and chart series")
    async def run_log(name: str, max_points: int = Query(5000, ge=2, le=100_000)) -> dict[str, Any]:
        run = _run(name)
        try:
            path = st.runs.file(run, LOG)
        except RunNotFound:
            return {"name": run.name, "records": [], "views": training_views([])}
        try:
            recs = read_log(path, max_points)
        except ValueError as e:
            raise HTTPException(413, str(e)) from None
        return {"name": run.name, "records": recs, "views": training_views(recs)}

    @app.get("/api/runs/{name:path}/decode", summary="decision mix per lane and the distribution of c")
    async def run_decode(name: str) -> dict[str, Any]:
        return {"name": name, **decode_views(_run(name))}

    @app.get("/api/runs/{name:path}/metrics/{file}", summary="one eval JSON from the run's metrics/")
    async def run_metrics(name: str, file: str) -> Any:
        run = _run(name)
        try:
            path = st.runs.file(run, METRICS, file)
        except RunNotFound:
            raise HTTPException(404, "no such metrics file") from None
        if path.suffix != ".json" or path.stat().st_size > 32 * 2**20:
            raise HTTPException(404, "no such metrics file")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise HTTPException(422, "metrics file is not valid JSON") from None

    # ---- dashboard -------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes, metrics=metrics)
    app.add_middleware(MetricsMiddleware, metrics=metrics, known_paths=API_PATHS)
    return app
