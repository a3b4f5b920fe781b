"""`vecrag serve BANK`: the HTTP API (search, next, generate, metrics) and the run dashboard."""

from __future__ import annotations

import argparse
import ipaddress
import logging

from vecrag.errors import VecragError

COMMAND = ("serve",)
HELP = "serve a bank over HTTP: /search, /next, /generate, /metrics and a training/decoding dashboard at /"
DESCRIPTION = """\
Load the bank, its index, the bank's encoder and the decoder (LVM + retriever: trained run directories, or
the heuristic predictors by default) once, then serve:

  POST /search     texts or vectors -> top-k chunk ids, scores, texts, titles
  POST /next       context texts or chunk ids -> cascade top-k and the SNAP/BLEND/NOVEL decision
  POST /generate   prompt -> decoded steps and the continuation as one passage (as `vecrag generate`)
  GET  /healthz, GET /metrics (Prometheus), GET /docs (OpenAPI)
  GET  /           dashboard: training curves, Recall@K vs baselines, decision mix, generate playground
                   for the run directories under --runs DIR

Decode profiles: the calibrated ones (conservative, neutral, creative) use the calibration that `vecrag
calibrate BANK --lvm ... --retriever ...` wrote for the same --lvm and --retriever; it is read once at start-up.
With it the default profile is neutral; without it the default is greedy (always SNAP to the best unused
chunk), gtr-t5 works too, and a request for a calibrated profile is refused (422) with the command to run.
No generation shows a chunk twice or repeats the prompt.

Binds to 127.0.0.1 by default; binding another address exposes the API (no authentication) and prints a
warning. Requests are validated (422), bodies over --max-body-mb are refused (413), and all search/model
compute runs on one worker thread with a bounded queue (503 when full).

Example: vecrag serve banks/wiki-500 --runs runs --lvm runs/lvm-tiny --port 8080
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bank", metavar="BANK", help="bank directory")
    p.add_argument("--lvm", default=None, metavar="RUN|heuristic:KIND[:ALPHA]",
                   help="LVM run directory for /next and /generate (default heuristic:ewma)")
    p.add_argument("--retriever", default=None, metavar="RUN|heuristic:KIND[:ALPHA]",
                   help="retriever run directory (its query tower; default heuristic:last)")
    p.add_argument("--runs", default=None, metavar="DIR", help="directory of run directories for the dashboard")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    p.add_argument("--port", type=int, default=8080, help="port")
    p.add_argument("--profiles", default=None, metavar="FILE.yaml", help="decode profiles (default: shipped)")
    p.add_argument("--backend", default="auto", choices=("auto", "faiss", "torch"),
                   help="search: the bank's saved FAISS index, or exact torch search")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (encoder, models, torch search)")
    p.add_argument("--threads", type=int, default=None, help="torch/faiss threads (default: all cores)")
    p.add_argument("--timeout-ms", type=float, default=50.0,
                   help="cascade retrieval timeout per step; on overrun the step is NOVEL (0 = none)")
    p.add_argument("--max-body-mb", type=float, default=4.0, help="largest request body accepted (MiB)")
    p.add_argument("--max-pending", type=int, default=256, help="requests queued for compute before 503")
    p.add_argument("--no-encoder", action="store_true", help="do not load the text encoder (vectors only)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from vecrag.runtime import report_openmp, set_threads
    from vecrag.serve.app import create_app

    if not 0 < args.port < 65536:
        raise VecragError(f"--port must be in 1..65535, got {args.port}")
    if args.max_body_mb <= 0 or args.max_pending < 1:
        raise VecragError("--max-body-mb must be > 0 and --max-pending >= 1")
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        logging.getLogger(__name__).warning(
            "binding %s: the API has no authentication; anyone who can reach this address can use it",
            args.host)
    set_threads(args.threads, args.threads)
    report_openmp()
    app = create_app(args.bank, lvm=args.lvm, retriever=args.retriever, runs_root=args.runs,
                     max_body_bytes=int(args.max_body_mb * 2**20), device=args.device,
                     load_text_encoder=not args.no_encoder, max_pending=args.max_pending, backend=args.backend,
                     profiles=args.profiles, timeout_ms=args.timeout_ms or None)
    print(f"vecrag: serving {args.bank} on http://{args.host}:{args.port}/ (docs: /docs, metrics: /metrics)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0
