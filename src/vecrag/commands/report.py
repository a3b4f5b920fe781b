"""`vecrag report RUN [--out DIR]`: a self-contained HTML report with PNG plots of a run."""

from __future__ import annotations

import argparse

COMMAND = ("report",)
HELP = "write a self-contained HTML page with PNG plots of a run (training, validation, decoding)"
DESCRIPTION = """\
Read RUN/log.jsonl (train / val / mining / event records) and the decode telemetry or eval JSON in RUN and
RUN/metrics, and write OUT/report.html (every plot embedded as a base64 PNG, so the one file can be shared)
plus the PNGs beside it: loss, learning rate, samples/s, RSS/CUDA memory, miner statistics, Recall@K per
epoch against the baselines, % SNAP/BLEND/NOVEL by lane and the distribution of c. OUT defaults to RUN/report.

Example: vecrag report runs/lvm-tiny --out /tmp/lvm-report
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory (from `vecrag train ...`)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default RUN/report)")


def run(args: argparse.Namespace) -> int:
    from vecrag.serve.report import write_report

    page = write_report(args.run, args.out)
    print(f"vecrag: wrote {page}")
    return 0
