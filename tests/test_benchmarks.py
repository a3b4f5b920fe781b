"""Smoke tests of benchmarks/ and scripts/: each benchmark runs as a subprocess at a tiny size on the CPU and must
print its table; the GPU shell scripts are checked by syntax and by dry runs whose commands are parsed by the real
argument parsers (vecrag's and each benchmark's), so an option renamed in the code breaks a test, not a GPU run.

Every benchmark has a CPU path (``--device cpu`` is the default where there is a device), so none is limited to
``--help``; only scripts/dashboard_screenshot.py is (it drives chromium) and scripts/demo.sh to ``bash -n``
(``make demo`` runs it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import make_synthetic_bank
from vecrag.models.lvm import LVM_KINDS

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # s per subprocess: a generous bound for a loaded 2-core machine (each takes 2-12 s alone)
ENV = {"OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = TIMEOUT) -> str:
    """Run ``argv`` at the repository root; its stdout, after asserting exit code 0."""
    proc = subprocess.run(argv, cwd=ROOT, env={**os.environ, **ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, (f"{' '.join(argv)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                                  f"--- stderr\n{proc.stderr[-4000:]}")
    return proc.stdout


def bench(name: str, *args: object) -> list[str]:
    return [sys.executable, f"benchmarks/{name}.py", *map(str, args)]


def has_row(out: str, pattern: str) -> bool:
    return re.search(pattern, out, re.MULTILINE) is not None


def assert_rows(out: str, *patterns: str) -> None:
    missing = [p for p in patterns if not has_row(out, p)]
    assert not missing, f"no line matches {missing} in:\n{out[-4000:]}"


NUM = r"[\d,]+(?:\.\d+)?"  # a finite number as the tables print it (never nan)


# --- set-ups of the benchmarks that need a bank, a corpus or a trained run ----------------------------------------

def calibrated_bank(tmp: Path) -> Path:
    """A synthetic bank with lanes and a calibration of heuristic:ewma + heuristic:last (generation_bench needs one)."""
    from vecrag.cli import main

    bank = make_synthetic_bank(tmp / "bank", n_articles=40, per_article=10, lanes=["legal", "science"])
    assert main(["calibrate", str(bank.path), "--lvm", "heuristic:ewma", "--retriever", "heuristic:last",
                 "--quiet", "--max-articles", "5"]) == 0
    return bank.path


def retriever_run(tmp: Path) -> Path:
    """A tiny retriever run (one epoch of retriever-tiny on a synthetic bank) for rerank_probe."""
    from vecrag.cli import main

    bank = make_synthetic_bank(tmp / "bank", n_articles=30, per_article=10)
    assert main(["train", "retriever", str(bank.path), "train.epochs=1", "--config", "retriever-tiny", "--out",
                 str(tmp / "retriever"), "--quiet"]) == 0
    return tmp / "retriever"


def tiny_corpus(tmp: Path, n: int = 20) -> Path:
    """A JSONL corpus of ``n`` short articles (a few sentences each)."""
    path = tmp / "corpus.jsonl"
    lines = []
    for a in range(n):
        text = " ".join(f"Article {a} says thing number {s} about the river and the valley in plain words."
                        for s in range(12))
        lines.append(json.dumps({"title": f"Article {a}", "text": text}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- the benchmarks: (argv at a tiny size, line patterns its table must have) -------------------------------------

Case = Callable[[Path], tuple[list[str], list[str]]]

CASES: dict[str, Case] = {
    # 10 child processes (each run once): before (= this tree), recorded, first open; warm-up and final runs
    "bank_open": lambda t: (
        bench("bank_open", "--before-src", "src", "--bank", t / "bank", "--n", 200, "--dim", 16, "--repeats", 1),
        [r"^version\s+open\s+open \+ first use\s+vecrag search --id$",
         rf"^before \(no checks\)\s+{NUM}s\s+{NUM}s\s+{NUM}s$",
         rf"^after, recorded \(usual\)\s+{NUM}s", rf"^after, first open \(full check\)\s+{NUM}s"]),
    "blend_bench": lambda t: (
        bench("blend_bench", calibrated_bank(t), "--lvm", "heuristic:ewma", "--retriever", "heuristic:last",
              "--steps", 3, "--max-articles", 3, "--prompt-chunks", "3,4", "--max-samples", 50),
        [r"^split\s+steps\s+neutral\s+n\* alone\s+neutral - n\* alone$",
         *(rf"^{s}\s+\d+\s+[+-]{NUM} \+- {NUM}\s+[+-]{NUM} \+- {NUM}\s+[+-]{NUM} \+- {NUM}$" for s in ("val", "test")),
         rf"^neutral\s+\d+\s+{NUM} \+- {NUM}$", rf"^n\* alone\s+\d+\s+{NUM} \+- {NUM}\s+[+-]{NUM} \+- {NUM}$",
         rf"^greedy tower\s+\d+\s+{NUM} \+- {NUM}\s+[+-]{NUM} \+- {NUM}$"]),
    "decode_bench": lambda t: (
        bench("decode_bench", "--sizes", 500, "--kinds", "flat,ivf", "--steps", 3, "--dim", 16, "--K", 20,
              "--threads", 1),
        [r"^ shortlist k\s+mean ms\s+p95 ms$", rf"^\s+500\s+{NUM}\s+{NUM}$", r"step p95$",
         rf"^\s+500\s+flat\s+on(\s+{NUM}){{9}}$", rf"^\s+500\s+ivf\s+off(\s+{NUM}){{9}}$"]),
    "flat_search": lambda t: (
        bench("flat_search", "--size", 500, "--dim", 16, "--nq", "4,16", "--reps", 1),
        [r"^exact search of a 500 x 16 bank", r"torch matmul \+ topk$", rf"^\s+4(\s+{NUM}){{5}}$",
         rf"^\s+16(\s+{NUM}){{5}}$"]),
    "generation_bench": lambda t: (
        bench("generation_bench", calibrated_bank(t), "--lvm", "heuristic:ewma", "--retriever", "heuristic:last",
              "--steps", 3, "--max-articles", 3),
        [r"^before \(gtr-t5 bands, w_lvm 1, no rule\)", r"^decoder:neutral\s", r"^decoder:creative\s",
         r"^true continuation\s", r"^retrieval ceiling: the 3 best chunks", rf"^\s+tower\s+{NUM} %"]),
    "index_bench": lambda t: (  # one query: each q/s measure is one pass, not a 3 s budget
        bench("index_bench", "--sizes", 2000, "--dim", 16, "--queries", 1, "--threads", 1),
        [r"^\| N \| index \| params \| device \| build s \| q/s batch 1 \| q/s batch 1024 \| Recall@10 vs exact \|$",
         *(rf"^\| 2,000 \| {k} \| .* \| cpu \| {NUM} \| {NUM} \| {NUM} \| {NUM} \|$"
           for k in ("exact-torch", "flat", "ivf", "hnsw", "ivfpq"))]),
    "graph_step": lambda t: (  # on a CPU: the eager trainer rows and the bare eager LVM step
        bench("graph_step", "--device", "cpu", "--size", 3000, "--steps", 4, "--log-every", 2, "--k", 8,
              "--workdir", t),
        [r"^\| task \| step \| batch \| samples/s \| vs bare graphed step \|$",
         *(rf"^\| {task} \| {m} \| 256 \| {NUM} \|  \|$" for task, m in
           (("retriever", "none"), ("retriever", "sync"), ("lvm", "trainer"), ("lvm", "bare eager")))]),
    "ingest_overhead": lambda t: (
        bench("ingest_overhead", "--corpus", tiny_corpus(t), "--articles", 20, "--batch-size", 16),
        [r"^\| articles \| chunks \| seconds \| chunks/s without the encoder \|$",
         rf"^\| 20 \| {NUM} \| {NUM} \| {NUM} \|$"]),
    "lvm_bench": lambda t: (
        bench("lvm_bench", "--device", "cpu", "--dim", 16, "--context", 4, "--hidden", 16, "--layers", 1, "--heads",
              2, "--batch", 8, "--steps", 2, "--reps", 2, "--warmup", 1, "--threads", 1),
        [r"^arch\s+params\s+train samples/s", *(rf"^{k}\s+{NUM}\s+{NUM}\s+{NUM} / {NUM}\s+{NUM} / {NUM}\s*$"
                                                for k in LVM_KINDS)]),
    "mask_cost": lambda t: (
        bench("mask_cost", "--n", 2000, "--shapes", "4x8,8x16", "--reps", 3),
        [r"^id_mask on the host: 2000 chunks", r"^\s+B\s+K\s+ms/call\s+checksum$", rf"^\s+4\s+8\s+{NUM}\s+\d+$",
         rf"^\s+8\s+16\s+{NUM}\s+\d+$"]),
    "mining_step": lambda t: (
        bench("mining_step", "--size", 2000, "--batch", 8, "--k", 8, "--context", 4, "--reps", 2, "--profile"),
        [r"^\s+path\s+ms per step \(median\)\s+min$", *(rf"^\s+{p}\s+{NUM}\s+{NUM}$"
                                                          for p in ("host rows", "resident", r"\+ search")),
         r"^resident path, 2 steps under torch.profiler:", rf"^\s+queue \(4,096\)\s+{NUM}$",
         rf"^\s+index_select \(what gather uses\)\s+{NUM}$"]),
    "negatives_cost": lambda t: (  # the modes of its own (static, load, gil) beside none and async
        bench("negatives_cost", "--size", 2000, "--modes", "none,static,async,load,gil", "--steps", 10, "--batch", 8,
              "--neg", 2, "--workdir", t),
        [r"^negatives cost: device cpu", r"^\s+mode\s+samples/s\s+range\s+vs none",
         *(rf"^\s+{m}\s+{NUM}\s+{NUM}-{NUM}\s+{NUM}%" for m in ("none", "static", "async", "load", "gil")),
         rf"^\s+load(\s+\S+){{7}}\s+{NUM}\s+\S+$"]),  # the search thread ran beside the trainer
    "omp_spin": lambda t: (  # one child process per policy
        bench("omp_spin", "--rounds", 1, "--size", 2000, "--steps", 10, "--batch", 8, "--modes", "none",
              "--policies", "passive,default", "--workdir", t),
        [r"^retriever training samples/s on the CPU", r"^\s+policy\s+none$",
         rf"^\s+passive\s+{NUM} \(1.00x\)$", rf"^\s+default\s+{NUM} \(\s*{NUM}x\)$"]),
    "rerank_probe": lambda t: (
        bench("rerank_probe", retriever_run(t), "--k", 10, "--train", 50, "--epochs", 2, "--hidden", 8, "--vectors"),
        [r"^re-ranking the tower's top 10 of .* \+ candidate vectors", r"^ split\s+ranking\s+R@1\s+R@10\s+R@10$",
         *(rf"^\s+{s}\s+{r}(\s+{NUM}){{3}}$" for s in ("val", "test") for r in ("tower", "reranked"))]),
    "scaling": lambda t: (
        bench("scaling", "--sizes", 2000, "--dim", 16, "--modes", "none,sync,async", "--backends", "torch,faiss",
              "--steps", 10, "--batch", 8, "--k", 8, "--neg", 2, "--context", 4, "--hidden", 16,
              "--types", "torch,flat,ivf,ivfpq", "--nprobes", "2,4", "--pq-m", 4, "--nbits", 4, "--refine", 2,
              "--queries", 64, "--gt-queries", 16, "--qps-budget", 0.2, "--workdir", t, "--out", t / "s.json"),
        [r"^\| N \| mining \| backend \(search on\) \| samples/s \|",
         *(rf"^\| 2,000 \| {m} \| {b} \| {NUM} \| " for m, b in
           (("none", r"- \(-\)"), ("sync", r"torch \(cpu\)"), ("async", r"faiss \(cpu\)"))),
         r"^\| N \| index \| params \| search on \| build s \| queries/s \| Recall@10 \|",
         *(rf"^\| 2,000 \| {k} \| .* \| cpu \| {NUM} \| {NUM} \| {NUM} \|" for k in ("exact-torch", "flat", "ivf")),
         rf"^\| 2,000 \| ivfpq \| nlist=\d+, m=4, nbits=4, refine=2, nprobe=4, .* \| {NUM} \|"]),
    "serve_load": lambda t: (  # a served bank: one 384-D text query goes through the bundled encoder
        bench("serve_load", "--bank", t / "bank", "--n", 500, "--duration", 0.5, "--clients", 2,
              "--json-out", t / "load.json"),
        [r"^vecrag serve load test: bank 500 x 384 \(flat index\)", r"^\| scenario\s+\| requests \| errors \|",
         *(rf"^\| {s}\s+\|\s+\d+ \|\s+0 \|\s+{NUM} \|" for s in ("search-vec", "search-text", "next-ids"))]),
    "step_ops": lambda t: (
        bench("step_ops", "--size", 2000, "--steps", 2, "--modes", "none,static"),
        [r"^leaf ops that launch a kernel, per optimizer step", r"^\s+mode\s+ops/step$",
         rf"^\s+none\s+{NUM}$", rf"^\s+static\s+{NUM}$"]),
    "topk_bench": lambda t: (
        bench("topk_bench", "--rows", 4, "--cols", 500, "--k", 5, 10, "--widths", 32, "--reps", 2, "--matmul"),
        [r"^4 x 500 float32 scores on cpu", rf"^matmul q @ bank.T: {NUM} ms$",
         r"^\| k \| torch.topk ms \| block width \| block_topk ms \| speed-up \| equal values \|$",
         rf"^\| 5 \| {NUM} \| fast_topk \(the default\) \| {NUM} \| {NUM}x \| True \|$",
         rf"^\| 10 \| {NUM} \| 32 strided \| {NUM} \| {NUM}x \| True \|$"]),
    "train_retriever": lambda t: (
        bench("train_retriever", "--sizes", 2000, "--dim", 16, "--modes", "none,sync,async,async-proc", "--batch", 8,
              "--steps", 4, "--log-every", 2, "--k", 8, "--neg", 2, "--context", 4, "--hidden", 16,
              "--workdir", t),
        [r"^retriever training throughput: device cpu", r"^\s+bank\s+mining\s+samples/s\s+vs none\s+async hits",
         *(rf"^\s+2000\s+{m}\s+{NUM}\s+{NUM}%" for m in ("none", "sync", "async", "async-proc"))]),
}
SLOW: set[str] = set()  # none takes 20 s on the 2-core machine (tests/test_benchmarks.py --durations)


def test_every_benchmark_has_a_case() -> None:
    assert sorted(CASES) == sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in CASES])
def test_benchmark_smoke(name: str, tmp_path: Path) -> None:
    argv, patterns = CASES[name](tmp_path)
    out = run(argv)
    assert_rows(out, *patterns)
    if name == "serve_load":
        rows = json.loads((tmp_path / "load.json").read_text())["rows"]
        assert [r["scenario"] for r in rows] == ["search-vec", "search-text", "next-ids"]
        assert all(r["requests"] > 0 and r["errors"] == 0 for r in rows), rows


# --- scripts/ ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", ["demo.sh", "gpu_bench.sh", "gpu_quality.sh"])
def test_shell_script_syntax(script: str) -> None:
    run(["bash", "-n", f"scripts/{script}"])  # demo.sh: only this (`make demo` runs it)


def test_dashboard_screenshot_help() -> None:
    # --help only: a real run drives Debian's chromium through Playwright against a served bank and runs
    out = run([sys.executable, "scripts/dashboard_screenshot.py", "--help"])
    assert out.startswith("usage: dashboard_screenshot.py") and "--retriever" in out and "--runs" in out


RECORDER = """#!{exe}
import json, os, sys
from pathlib import Path

argv = sys.argv[1:]
with open(os.environ["RECORD_TO"], "a") as f:
    f.write(json.dumps(argv) + "\\n")
out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
if argv[:1] == ["ingest"] or argv[:2] == ["bank", "merge"]:  # what gpu_quality.sh checks before going on
    out.mkdir(parents=True)
    (out / "manifest.json").write_text("{{}}")
elif argv[:1] == ["train"]:  # a run that validated: gpu_quality.sh picks the best R@10 / cos
    out.mkdir(parents=True)
    score = 0.5 if out.name == "ret-sync" else 0.3
    recs = [{{"kind": "train", "epoch": 1, "samples_per_s": 100.0}}, {{"kind": "val", "R@10": score, "cos": score}}]
    (out / "log.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in recs))
print("| recorded |", *argv)
"""


def recorder(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """An executable ``name`` that appends its argv (JSON, a line) to the returned log and fakes its outputs."""
    exe = tmp_path / "bin" / name
    exe.parent.mkdir(exist_ok=True)
    exe.write_text(RECORDER.format(exe=sys.executable))
    exe.chmod(0o755)
    return exe, tmp_path / f"{name}.calls.jsonl"


def recorded(log: Path) -> list[list[str]]:
    return [json.loads(x) for x in log.read_text().splitlines()]


PARSE_ONLY = r"""
import argparse, json, runpy, sys

class Parsed(Exception):
    pass

parse_args = argparse.ArgumentParser.parse_args

def parse_then_stop(self, args=None, namespace=None):
    parse_args(self, args, namespace)  # an unknown option or a bad value exits 2 here
    raise Parsed

argparse.ArgumentParser.parse_args = parse_then_stop
for line in open(sys.argv[1]):
    sys.argv = json.loads(line)
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except Parsed:
        print("parsed", *sys.argv)
    else:
        raise SystemExit(f"{sys.argv[0]} never parsed its arguments")
"""


def test_gpu_bench_dry_run(tmp_path: Path) -> None:
    """Every stage of scripts/gpu_bench.sh with a recording PYTHON: each benchmark command it would run on the GPU
    machine is then parsed by that benchmark's own parser (up to parse_args, nothing measured)."""
    py, log = recorder(tmp_path, "python")
    res = tmp_path / "results"
    out = run(["bash", "scripts/gpu_bench.sh", str(res)], env={"PYTHON": str(py), "RECORD_TO": str(log)})
    stages = ["train", "big_train", "big_index", "cpu_train", "lvm", "index", "profile"]
    assert [ln.split()[-1] for ln in out.splitlines() if ln.startswith("== ")] == [*stages, "done"]
    assert out.count("   exit 0 ; | recorded | benchmarks/") == len(stages)
    calls = recorded(log)
    assert [c[0] for c in calls] == ["benchmarks/train_retriever.py"] * 2 + ["benchmarks/scaling.py"] + \
        ["benchmarks/train_retriever.py", "benchmarks/lvm_bench.py", "benchmarks/scaling.py",
         "benchmarks/train_retriever.py"]
    parsed = run([sys.executable, "-c", PARSE_ONLY, str(log)])
    assert parsed.count("parsed benchmarks/") == len(stages)
    # an unknown stage is skipped with a message, the others still run
    out = run(["bash", "scripts/gpu_bench.sh", str(res)], env={"STAGES": "nope lvm", "PYTHON": str(py),
                                                                 "RECORD_TO": str(log)})
    assert "unknown stage nope" in (res / "nope.txt").read_text() and "| recorded | benchmarks/lvm_bench.py" in out


def test_gpu_quality_dry_run(tmp_path: Path) -> None:
    """scripts/gpu_quality.sh end to end with a recording `vecrag` (two sources: ingest both, merge, train, pick the
    best pair, evaluate): every command it would run is parsed by vecrag's own parser, every training's config with
    its overrides is loaded and validated."""
    from vecrag.cli import build_parser
    from vecrag.config import command_overrides, load_config
    from vecrag.train.lvm_task import LVMConfig
    from vecrag.train.retriever_config import RetrieverConfig

    exe, log = recorder(tmp_path, "vecrag")
    (tmp_path / "bin" / "python3").symlink_to(sys.executable)  # the script's inline python3 snippets
    work = tmp_path / "work"
    out = run(["bash", "scripts/gpu_quality.sh", str(work), "a.jsonl.xz", "b.jsonl.xz"],
              env={"PATH": f"{exe.parent}{os.pathsep}{os.environ['PATH']}", "RECORD_TO": str(log)})
    assert "== +" in out and out.rstrip().endswith("done")
    assert "calibrate decoding on VAL with retriever ret-sync and LVM lvm-nce0.1" in out
    assert "ret-sync: median samples/s (epochs >= 1) 100;" in out
    assert (work / "results.tgz").is_file()
    calls = recorded(log)
    names = [" ".join(c[:2]) if c[0] in ("bank", "eval", "train") else c[0] for c in calls]
    assert Counter(names) == {"ingest": 2, "bank merge": 1, "bank info": 1, "eval baselines": 1, "train retriever": 3,
                              "train lvm": 1, "eval retriever": 3, "eval lvm": 1, "calibrate": 1, "eval cascade": 1,
                              "eval decode": 3, "eval generate": 1}
    parser = build_parser()
    for argv in calls:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"vecrag {' '.join(argv)}: not accepted by the parser ({e})")
        if argv[0] == "train":
            _, overrides = command_overrides(args)
            load_config(RetrieverConfig if argv[1] == "retriever" else LVMConfig, args.config, overrides)
