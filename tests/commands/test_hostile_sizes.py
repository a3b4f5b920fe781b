"""The hostile-input cases for search, eval, generate and serve (sizes, empty and non-finite input), as tests.

Row numbers refer to ``shared/reviews/hostile-input-cases.md``. Every size a user types is bounded by what the
bank can give or by a documented cap (:mod:`vecrag.commands.sizes`): each case asserts the exit code, that no
traceback is printed, the message's key words, and that the bank's data files are untouched. Cases that took
gigabytes before the fix run in a child process under ``RLIMIT_AS`` (:data:`LIMIT_BYTES`), so a regression
fails with a MemoryError instead of taking the machine.
"""

from __future__ import annotations

import hashlib
import importlib.resources as resources
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_synthetic_bank
from vecrag.bank.store import Bank
from vecrag.cli import main
from vecrag.decode.cascade import Cascade, CascadeConfig, GuardedSearch
from vecrag.errors import VecragError

REPO = Path(__file__).resolve().parents[2]
LIMIT_BYTES = 4 * 2**30  # a vecrag command on these banks peaks near 2.7 GB of address space (torch, faiss)
HUGE = 1_000_000_000
DATA_FILES = ("vectors.npy", "chunks.parquet", "articles.parquet")
DIM = 32
# 30 articles of 5..33 chunks (5 twice): the longest has 33 chunks, the bank 556
LENGTHS = [5 + (7 * i) % 29 for i in range(30)]
LONGEST = max(LENGTHS)

# A child process: the memory limit first, then (for text queries) a stand-in encoder, then the CLI.
CHILD = textwrap.dedent("""
    import resource, sys
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np
    import vecrag.bank.encode
    from vecrag.bank.store import EncoderInfo

    class FakeEncoder:
        def __init__(self, name, dim):
            self.dim, self.info = dim, EncoderInfo(name, dim)

        def encode(self, texts, progress=False):
            out = np.stack([np.random.default_rng(sum(t.encode())).standard_normal(self.dim) for t in texts])
            return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    vecrag.bank.encode.load_encoder = lambda name=None, device="auto": FakeEncoder(name, int(sys.argv[2]))
    from vecrag.cli import main
    sys.exit(main(sys.argv[3:]))
""")


# ---- helpers -------------------------------------------------------------------------------------------
def digest(bank_path: Path) -> dict[str, str]:
    return {f: hashlib.sha256((bank_path / f).read_bytes()).hexdigest() for f in DATA_FILES}


def cli(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    """Run the CLI in this process; (exit code, stdout, stderr), with no traceback on stderr."""
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def limited(*args: Any, limit: int = LIMIT_BYTES, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a child process whose address space is capped at ``limit`` bytes."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "MALLOC_ARENA_MAX": "2",
           "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(limit), str(DIM), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr[-3000:]
    return proc


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("vecrag: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Bank:
    return make_synthetic_bank(tmp_path_factory.mktemp("hostile") / "bank", n_articles=len(LENGTHS),
                               per_article=LENGTHS, dim=DIM)


@pytest.fixture
def untouched(bank: Bank):
    """The bank's data files are byte-identical after the test."""
    before = digest(bank.path)
    yield bank
    assert digest(bank.path) == before


def test_the_bank_is_what_the_rows_assume(bank: Bank) -> None:
    assert bank.n == sum(LENGTHS) and len(bank.split_articles("val")) and len(bank.split_articles("test"))


# ---- search (rows 46-51) ---------------------------------------------------------------------------------
@pytest.mark.parametrize("k", ["0", "-5"])
def test_row46_search_k_zero_or_negative(untouched: Bank, capsys: pytest.CaptureFixture[str], k: str) -> None:
    rc, out, err = cli(capsys, "search", untouched.path, "train derailment", "-k", k)
    assert rc == 2 and out == "" and f"-k must be positive, got {k}" in error_line(err)


@pytest.mark.parametrize("query", [["a train derailed"], ["--id", "4"]], ids=["text", "id"])
def test_row47_search_k_a_billion_is_clamped_under_a_memory_limit(untouched: Bank, query: list[str]) -> None:
    """Before: killed by the OOM killer at 23.6 GB. Now every chunk, once, and a note."""
    proc = limited("search", untouched.path, *query, "-k", HUGE, "--json", "--backend", "torch")
    assert proc.returncode == 0
    res = json.loads(proc.stdout)
    assert res["k"] == untouched.n and len(res["results"]) == untouched.n
    assert sorted(r["id"] for r in res["results"]) == list(range(untouched.n))
    assert f"-k {HUGE} is more than the bank's {untouched.n} chunks: showing all {untouched.n}" in proc.stderr


def test_row48_search_k_above_n_gives_n_results(untouched: Bank, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = cli(capsys, "search", untouched.path, "--id", "3", "-k", "100000", "--json")
    res = json.loads(out)
    assert rc == 0 and len(res["results"]) == untouched.n and res["results"][0]["id"] == 3
    assert err.count("vecrag: note:") == 1


@pytest.mark.parametrize("cid", ["99999", "-1"])
def test_row49_search_id_outside_the_bank(untouched: Bank, capsys: pytest.CaptureFixture[str], cid: str) -> None:
    rc, _, err = cli(capsys, "search", untouched.path, "--id", cid, "-k", "3")
    assert rc == 2 and f"chunk id {cid} is outside the bank (0..{untouched.n - 1})" in error_line(err)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_row50_search_empty_text_is_refused(untouched: Bank, capsys: pytest.CaptureFixture[str], text: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import vecrag.bank.encode

    monkeypatch.setattr(vecrag.bank.encode, "load_encoder", lambda *a, **k: pytest.fail("the encoder was loaded"))
    rc, out, err = cli(capsys, "search", untouched.path, text, "-k", "3")
    assert rc == 2 and out == "" and "the query text is empty" in error_line(err) and "--id N" in err


def test_row51_search_with_a_garbage_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bank = make_synthetic_bank(tmp_path / "bank", n_articles=10, per_article=5, dim=8)
    assert cli(capsys, "index", bank.path, "--type", "flat", "--quiet")[0] == 0
    (bank.path / "index" / "flat.faiss").write_bytes(b"\0" * 64)
    before = digest(bank.path)
    rc, _, err = cli(capsys, "search", bank.path, "--id", "3", "-k", "3")
    assert rc == 2 and "corrupt or truncated" in error_line(err) and "vecrag index" in err
    assert digest(bank.path) == before


# ---- eval baselines (rows 52-54) -------------------------------------------------------------------------
def test_row52_eval_on_a_split_with_no_queries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bank = make_synthetic_bank(tmp_path / "bank", n_articles=10, per_article=5, dim=8)
    assert cli(capsys, "bank", "split", bank.path, "--ratios", "1,0,0")[0] == 0
    rc, _, err = cli(capsys, "eval", "baselines", bank.path, "--split", "test", "--no-text-baselines", "--quiet",
                     "--out", tmp_path / "out.json")
    assert rc == 2 and "no test samples with at least one context chunk" in error_line(err)
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--context", "0", "--context must be >= 1, got 0"),              # row 53
    ("--context", "-3", "--context must be >= 1, got -3"),            # row 53
    ("--max-queries", "0", "--max-queries must be >= 1, got 0"),
    ("--max-queries", "-1", "--max-queries must be >= 1, got -1"),    # was a numpy ValueError traceback
    ("--bm25-last", "0", "--bm25-last must be >= 1, got 0"),
    ("--seed", "-1", "--seed must be in 0..4294967295, got -1"),      # was a numpy ValueError traceback
])
def test_row53_eval_baselines_sizes_below_their_minimum(untouched: Bank, capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path, flag: str, value: str, words: str) -> None:
    rc, _, err = cli(capsys, "eval", "baselines", untouched.path, "--split", "val", "--no-text-baselines",
                     "--quiet", "--out", tmp_path / "out.json", flag, value)
    assert rc == 2 and words in error_line(err) and not (tmp_path / "out.json").exists()


def _methods(path: Path) -> dict[str, dict[str, Any]]:
    rep = json.loads(path.read_text())
    return {m: {k: v for k, v in r.items() if k != "elapsed_s"} for m, r in rep["methods"].items()}


def test_row54_eval_baselines_context_10000_is_clamped_with_the_same_numbers(
        untouched: Bank, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Before: 8.15 GB (12.9 GB on this bank) for the same numbers as L = the longest article."""
    common = ("eval", "baselines", untouched.path, "--split", "val", "--no-text-baselines", "--quiet")
    proc = limited(*common, "--context", "10000", "--out", tmp_path / "huge.json")
    assert proc.returncode == 0
    assert (f"--context 10000 is longer than the bank's longest article ({LONGEST} chunks): using {LONGEST}"
            in proc.stderr)
    assert json.loads((tmp_path / "huge.json").read_text())["context"] == LONGEST
    assert cli(capsys, *common, "--context", LONGEST, "--out", tmp_path / "ref.json")[0] == 0
    assert _methods(tmp_path / "huge.json") == _methods(tmp_path / "ref.json")
    # one chunk shorter than the longest article still excludes every context chunk: also the same numbers
    assert cli(capsys, *common, "--context", LONGEST - 1, "--out", tmp_path / "short.json")[0] == 0
    assert _methods(tmp_path / "short.json") == _methods(tmp_path / "ref.json")


def test_eval_baselines_recall_at_a_billion_under_a_memory_limit(untouched: Bank, tmp_path: Path) -> None:
    """--ks 1000000000 searched 10^9 deep (216 GiB); the search depth is now the bank's size (exact numbers)."""
    proc = limited("eval", "baselines", untouched.path, "--split", "val", "--no-text-baselines", "--quiet",
                   "--ks", f"1,10,{HUGE}", "--out", tmp_path / "ks.json")
    assert proc.returncode == 0
    rows = json.loads((tmp_path / "ks.json").read_text())["methods"]
    assert rows["oracle"][f"R@{HUGE}"] == 1.0 and rows["last"][f"R@{HUGE}"] == 1.0  # every target is found


@pytest.mark.parametrize("L", [1, 3, LONGEST, 10 * LONGEST])
def test_retrieve_ranks_drops_the_context_as_a_range_with_the_same_ranks(untouched: Bank, L: int) -> None:
    """The hit rules drop the context as the id range it is (memory O(k), was O(k L): 12.9 GB at L=10000);
    small batches (the memory bound) change nothing either."""
    from vecrag.bank.sequences import gather_context, make_samples
    from vecrag.index.search import ExactTorchIndex
    from vecrag.scoring.heuristics import heuristic_query
    from vecrag.scoring.metrics import first_hit_rank
    from vecrag.scoring.ranks import retrieve_ranks

    samples = make_samples(untouched, "train")
    index = ExactTorchIndex(untouched.vectors)
    q = heuristic_query(*gather_context(untouched.vectors, samples.context_ids(min(L, LONGEST))), "mean")
    new = retrieve_ranks(index, q, samples, L, 50, bank=untouched, batch=37)
    ids = index.search(q, 50 + L)[1]
    old = first_hit_rank(ids, samples.target, ctx_ids=samples.context_ids(L), text_group=untouched.text_group)
    assert np.array_equal(new, old) and (new >= 0).any()


def test_eval_baselines_text_rows_are_batched_and_unchanged(untouched: Bank) -> None:
    """BM25's ranks, batch by batch with the context dropped as a range, equal one batch with the old id rule."""
    from vecrag.bank.sequences import make_samples
    from vecrag.eval.baselines import BM25Search, _text_rows, context_texts
    from vecrag.index.search import ExactTorchIndex
    from vecrag.scoring.metrics import first_hit_rank, recall_table

    samples = make_samples(untouched, "train")
    L, ks = 4, (1, 10, 100)
    rows = _text_rows(untouched, samples, L, ks, ExactTorchIndex(untouched.vectors), False, True, 2, None, 7,
                      False)
    ids = BM25Search(untouched, cache=False).search(context_texts(untouched, samples, 2), ks[-1] + L)
    old = first_hit_rank(ids, samples.target, ctx_ids=samples.context_ids(L), text_group=untouched.text_group)
    assert {k: v for k, v in rows["bm25-last2"].items() if k != "elapsed_s"} == recall_table(old, ks)


# ---- generate and eval lvm (rows 55-57) ------------------------------------------------------------------
def test_row55_generate_K_a_billion_is_clamped_under_a_memory_limit(untouched: Bank) -> None:
    proc = limited("generate", untouched.path, "--prompt", "A train derailed.", "--steps", "2", "--K", HUGE,
                   "--profile", "greedy", "--json")
    assert proc.returncode == 0
    rep = json.loads(proc.stdout)
    assert rep["cascade"]["K"] == untouched.n and len(rep["steps"]) == 2
    assert all(s["decision"] == "SNAP" for s in rep["steps"])
    assert f"--K {HUGE} is more than the bank's {untouched.n} chunks: using {untouched.n}" in proc.stderr


def test_generate_huge_context_len_and_threads_are_clamped_under_a_memory_limit(untouched: Bank) -> None:
    """--threads 100000 exhausted the address space with thread stacks; --context 10^9 is the whole article."""
    proc = limited("generate", untouched.path, "--prompt-ids", "0,1", "--steps", "2", "--profile", "greedy",
                   "--context", HUGE, "--threads", "100000", "--json")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)["steps"]) == 2
    assert f"--context {HUGE} is longer than the bank's longest article ({LONGEST} chunks)" in proc.stderr
    assert f"--threads 100000 is more than this machine's {os.cpu_count()} cores" in proc.stderr


@pytest.mark.parametrize(("extra", "words"), [
    (["--steps", "-1"], "--steps must be in 1..10000, got -1"),                      # row 56
    (["--steps", "0"], "--steps must be in 1..10000, got 0"),
    (["--steps", "600"], "--steps 600 is more than the bank can show without repeating a chunk"),
    (["--seed", "-1"], "--seed must be in 0..4294967295, got -1"),                    # was a numpy traceback
    (["--K", "0"], "--K must be >= 1, got 0"),
    (["--k", "0"], "--k must be >= 1, got 0"),
    (["--context", "0"], "--context must be >= 1, got 0"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),                            # was a torch traceback
    (["--nprobe", "0"], "--nprobe must be >= 1, got 0"),
    (["--timeout-ms", "nan"], "--timeout-ms must be a finite number and >= 0 and <= 3.6e+06, got nan"),
    (["--timeout-ms", "-1"], "--timeout-ms must be a finite number and >= 0"),
    (["--timeout-ms", "1e300"], "--timeout-ms must be a finite number and >= 0 and <= 3.6e+06, got 1e+300"),
    (["--w-lvm", "inf"], "--w-lvm must be a finite number, got inf"),
    (["--lane-lambda", "nan"], "--lane-lambda must be a finite number, got nan"),
])
def test_row56_generate_sizes_out_of_bounds(untouched: Bank, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            extra: list[str], words: str) -> None:
    tele = tmp_path / "tele.jsonl"
    rc, out, err = cli(capsys, "generate", untouched.path, "--prompt-ids", "0,1", "--profile", "greedy",
                       "--telemetry", tele, *(["--steps", "2"] if "--steps" not in extra else []), *extra)
    assert rc == 2 and words in error_line(err) and not tele.exists() and "[  1]" not in out


def test_generate_steps_a_billion_is_refused_in_a_bounded_child(untouched: Bank) -> None:
    """Before: 10^9 steps, one record each (a hang, then the memory); a regression here times out, never hangs."""
    proc = limited("generate", untouched.path, "--prompt-ids", "0,1", "--profile", "greedy", "--steps", HUGE,
                   "--allow-repeats", timeout=90)
    assert proc.returncode == 2 and f"--steps must be in 1..10000, got {HUGE}" in error_line(proc.stderr)
    assert "[  1]" not in proc.stdout


def test_generate_steps_up_to_the_bank_without_repeats(untouched: Bank, capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    """The largest --steps the bank allows is accepted; --allow-repeats lifts the bank bound (not the cap)."""
    small = make_synthetic_bank(tmp_path / "small", n_articles=3, per_article=4, dim=8)
    rc, out, err = cli(capsys, "generate", small.path, "--prompt-ids", "0,1", "--profile", "greedy", "--steps",
                       small.n - 2, "--json")
    steps = json.loads(out)["steps"]
    assert rc == 0 and len(steps) == small.n - 2
    assert len({s["text_id"] for s in steps}) == small.n - 2  # every other chunk, once
    rc, out, err = cli(capsys, "generate", small.path, "--prompt-ids", "0,1", "--profile", "greedy", "--steps",
                       small.n, "--allow-repeats", "--json")
    assert rc == 0 and len(json.loads(out)["steps"]) == small.n


def test_row57_eval_lvm_checkpoint_traversal(untouched: Bank, capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(REPO / "src" / "vecrag" / "presets" / "lvm-tiny.yaml", run / "config.yaml")
    rc, _, err = cli(capsys, "eval", "lvm", run, "--bank", untouched.path, "--checkpoint", "../../../../etc/passwd",
                     "--split", "val", "--no-ridge")
    assert rc == 2 and "checkpoint ../../../../etc/passwd.pt not found" in error_line(err) and "available" in err
    assert not (run / "metrics").exists()


@pytest.mark.parametrize(("extra", "words"), [
    (["--horizon", "-1"], "--horizon must be >= 0, got -1"),
    (["--max-queries", "0"], "--max-queries must be >= 1, got 0"),
    (["--contrast-batch", "0"], "--contrast-batch must be >= 1, got 0"),
    (["--contrast-batch", str(HUGE)], f"--contrast-batch {HUGE} is above the cap of 4096"),
    (["--ridge-max-train", "0"], "--ridge-max-train must be >= 1, got 0"),
    (["--threads", "-2"], "--threads must be >= 1, got -2"),
])
def test_eval_lvm_sizes_are_checked_before_any_work(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    extra: list[str], words: str) -> None:
    rc, _, err = cli(capsys, "eval", "lvm", tmp_path / "no-run", *extra)
    assert rc == 2 and words in error_line(err)


def test_eval_lvm_horizon_is_bounded_by_the_longest_article(untouched: Bank) -> None:
    from vecrag.commands.eval_lvm import check_horizon

    check_horizon(0, untouched)
    check_horizon(LONGEST - 1, untouched)  # a target at position 1 followed by the rest of the longest article
    with pytest.raises(VecragError, match=rf"--horizon {HUGE} is longer than any article continues \(the longest "
                                          rf"has {LONGEST} chunks: at most {LONGEST - 1} steps"):
        check_horizon(HUGE, untouched)


@pytest.mark.parametrize(("extra", "words"), [
    (["--max-queries", "-1"], "--max-queries must be >= 1, got -1"),
    (["--seed", "-1"], "--seed must be in 0..4294967295, got -1"),
])
def test_eval_retriever_sizes(capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str],
                              words: str) -> None:
    rc, _, err = cli(capsys, "eval", "retriever", tmp_path / "no-run", *extra)
    assert rc == 2 and words in error_line(err)


# ---- eval cascade / decode / generate, calibrate ---------------------------------------------------------
HEUR = ("--lvm", "heuristic:ewma", "--retriever", "heuristic:last")


def test_eval_cascade_K_and_context_len_a_billion_under_a_memory_limit(untouched: Bank, tmp_path: Path) -> None:
    proc = limited("eval", "cascade", untouched.path, *HEUR, "--split", "val", "--K", HUGE, "--k", HUGE,
                   "--context", HUGE, "--out", tmp_path, "--quiet", "--json")
    assert proc.returncode == 0
    rep = json.loads(proc.stdout)
    assert rep["K"] == untouched.n and rep["k"] == untouched.n and rep["context_len"] == LONGEST
    assert proc.stderr.count("vecrag: note:") == 3


def test_eval_decode_K_a_billion_under_a_memory_limit(untouched: Bank, tmp_path: Path) -> None:
    proc = limited("eval", "decode", untouched.path, *HEUR, "--split", "val", "--profile", "greedy", "--K", HUGE,
                   "--max-samples", "40", "--out", tmp_path, "--quiet", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["K"] == untouched.n
    assert f"--K {HUGE} is more than the bank's {untouched.n} chunks" in proc.stderr


def test_shortlist_cap_on_a_bank_larger_than_the_cap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = make_synthetic_bank(tmp_path / "big", n_articles=100, per_article=42, dim=4)  # 4,200 chunks > 4,096
    rc, _, err = cli(capsys, "eval", "cascade", big.path, *HEUR, "--split", "val", "--K", HUGE,
                     "--out", tmp_path / "out")
    assert rc == 2 and "--K 4200 is above the shortlist cap of 4096" in error_line(err) and "--K 500" in err
    assert not (tmp_path / "out").exists()


def test_a_profiles_file_shortlist_is_capped_too(untouched: Bank, capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    from vecrag.decode.profiles import PRESET

    text = resources.files("vecrag.presets").joinpath(PRESET).read_text(encoding="utf-8")
    prof = tmp_path / "decode.yaml"
    prof.write_text(text.replace("greedy: {force: SNAP, K: 500}", f"greedy: {{force: SNAP, K: {HUGE}}}"))
    rc, _, err = cli(capsys, "generate", untouched.path, "--prompt-ids", "0,1", "--profile", "greedy",
                     "--profiles", prof, "--steps", "1")
    assert rc == 2 and f"profile 'greedy': K={HUGE} is outside 1..4096" in error_line(err)
    rc, out, _ = cli(capsys, "generate", untouched.path, "--prompt-ids", "0,1", "--profile", "greedy",
                     "--profiles", prof, "--steps", "1", "--K", "50", "--json")
    assert rc == 0 and json.loads(out)["cascade"]["K"] == 50  # an explicit --K replaces the profile's


@pytest.mark.parametrize(("cmd", "extra", "words"), [
    ("cascade", ["--max-samples", "-2"], "--max-samples must be >= 0, got -2"),     # was a numpy traceback
    ("cascade", ["--min-context", "0"], "--min-context must be >= 1, got 0"),
    ("cascade", ["--seed", "-3"], "--seed must be in 0..4294967295, got -3"),
    ("decode", ["--profile", "greedy", "--K", "0"], "--K must be >= 1, got 0"),
    ("generate", ["--profile", "greedy", "--max-articles", "-2"], "--max-articles must be >= 0, got -2"),
    ("generate", ["--profile", "greedy", "--prompt-chunks", str(HUGE)],
     f"--prompt-chunks + --steps = {HUGE + 8} is more than the bank's longest article ({LONGEST} chunks)"),
    ("generate", ["--profile", "greedy", "--steps", "0"], "--prompt-chunks and --steps must be >= 1"),
])
def test_eval_decoder_commands_sizes(untouched: Bank, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     cmd: str, extra: list[str], words: str) -> None:
    rc, _, err = cli(capsys, "eval", cmd, untouched.path, *HEUR, "--split", "val", "--out", tmp_path / "out",
                     *extra)
    assert rc == 2 and words in error_line(err) and not (tmp_path / "out").exists()


def test_eval_generate_prompt_plus_steps_up_to_the_longest_article(untouched: Bank, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    train_longest = max(n for a, n in enumerate(LENGTHS) if a in set(untouched.split_articles("train").tolist()))
    rc, out, _ = cli(capsys, "eval", "generate", untouched.path, *HEUR, "--split", "train", "--profile", "greedy",
                     "--prompt-chunks", "2", "--steps", train_longest - 2, "--no-baselines", "--out", tmp_path,
                     "--quiet", "--json")
    assert rc == 0 and json.loads(out)["n_articles"] >= 1


@pytest.mark.parametrize(("extra", "words"), [
    (["--K", "0"], "--K must be >= 1, got 0"),
    (["--k", "0"], "--k must be >= 1, got 0"),
    (["--max-articles", "-1"], "--max-articles must be >= 0, got -1"),
    (["--max-samples", "-1"], "--max-samples must be >= 0, got -1"),
    (["--K", "20", "--k", "30"], "need 1 <= --k (30) <= --K (20)"),
])
def test_calibrate_sizes(untouched: Bank, capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str],
                         words: str) -> None:
    out = tmp_path / "cal.json"
    rc, _, err = cli(capsys, "calibrate", untouched.path, "--out", out, *extra)
    assert rc == 2 and words in error_line(err) and not out.exists()


# ---- the retrieval timeout (item 6) ----------------------------------------------------------------------
class SleepingIndex:
    """Exact search over ``vectors`` that takes ``sleep_s`` first."""

    def __init__(self, vectors: np.ndarray, sleep_s: float):
        self.vectors, self.sleep_s = vectors, sleep_s

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(self.sleep_s)
        s = q @ self.vectors.T
        ids = np.argsort(-s, axis=1)[:, :k]
        return np.take_along_axis(s, ids, 1).astype(np.float32), ids.astype(np.int64)


class InlineExecutor:
    """Runs each submitted call at once: the search has finished before the caller starts waiting (the race the
    review hit in 2 of 3 runs, made certain)."""

    def submit(self, fn: Any, *args: Any) -> Any:
        import concurrent.futures as cf

        fut: cf.Future = cf.Future()
        fut.set_result(fn(*args))
        return fut

    def shutdown(self, **_: Any) -> None:
        pass


VECS = np.eye(8, dtype=np.float32)


def test_a_search_done_after_the_deadline_is_a_timeout_even_if_the_wait_did_not_notice() -> None:
    g = GuardedSearch(SleepingIndex(VECS, 0.005), timeout_ms=1.0)
    g._pool = InlineExecutor()  # type: ignore[assignment]
    scores, ids, reasons = g.search(VECS[:2], 3)
    assert reasons == ["timeout", "timeout"] and (ids == -1).all() and g.counts["timeout"] == 2
    g = GuardedSearch(SleepingIndex(VECS, 0.0), timeout_ms=1000.0)
    g._pool = InlineExecutor()  # type: ignore[assignment]
    assert g.search(VECS[:1], 3)[2] == [""]  # within the deadline: a result


@pytest.mark.parametrize("sleep_s", [0.0, 0.002])
def test_a_one_microsecond_timeout_holds_on_the_first_step(sleep_s: float) -> None:
    """Review: 1 us was not enforced on the first generate step in 2 of 3 runs (an instant search finished before
    the wait began). Each run is a fresh cascade, with a real worker thread; 20 runs, 20 timeouts."""
    for _ in range(20):
        cas = Cascade(SleepingIndex(VECS, sleep_s), VECS, CascadeConfig(K=3, k=2, timeout_ms=0.001))
        try:
            res = cas.run(VECS[:1], VECS[:1])
        finally:
            cas.close()
        assert res.reasons == ["timeout"] and (res.ids == -1).all() and cas.fallbacks["timeout"] == 1


def test_generate_with_a_one_microsecond_timeout_falls_back_on_every_step(untouched: Bank,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "generate", untouched.path, "--prompt-ids", "0,1", "--profile", "greedy", "--steps",
                     "3", "--timeout-ms", "0.001", "--json")
    rep = json.loads(out)
    assert rc == 0 and rep["fallbacks"]["timeout"] == 3 and [s["decision"] for s in rep["steps"]] == ["NOVEL"] * 3


# ---- serve (rows 81-96, 100) -----------------------------------------------------------------------------
SECRET = "OUTSIDE-THE-RUNS-ROOT"
OUTSIDE_MTIME = 2_000_000_000.0


@pytest.fixture(scope="module")
def served(bank: Bank, tmp_path_factory: pytest.TempPathFactory):
    from vecrag.serve.app import create_app

    base = tmp_path_factory.mktemp("srv")
    root = base / "runs"
    (root / "good" / "metrics").mkdir(parents=True)
    (root / "good" / "log.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 1.0}) + "\n")
    (root / "good" / "metrics" / "eval.json").write_text("{}")
    outside = base / "outside"
    outside.mkdir()
    (outside / "log.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "note": SECRET}) + "\n" * 5000)
    (outside / "secret.json").write_text(json.dumps({"secret": SECRET}))
    (root / "evil" / "metrics").mkdir(parents=True)
    os.utime(outside / "log.jsonl", (OUTSIDE_MTIME, OUTSIDE_MTIME))
    os.symlink(outside / "log.jsonl", root / "evil" / "log.jsonl")              # row 95
    os.symlink(outside / "secret.json", root / "evil" / "metrics" / "s.json")   # row 94
    os.symlink(outside, root / "linkdir")                                       # row 94
    app = create_app(bank.path, runs_root=root, max_body_bytes=256 * 1024, load_text_encoder=False, device="cpu",
                     timeout_ms=None)
    with TestClient(app) as client:
        yield bank, client


def _post(client: TestClient, path: str, body: Any) -> Any:
    return client.post(path, content=body if isinstance(body, bytes | str) else json.dumps(body),
                       headers={"content-type": "application/json"})


@pytest.mark.parametrize(("row", "path", "body"), [
    (81, "/search", '{"texts": ["a", }'),
    (81, "/search", b"\x00\xff\xfe binary"),
    (82, "/search", {"texts": "hello"}),
    (82, "/search", {"vectors": [[0.1] * DIM], "k": "ten"}),
    (83, "/search", {}),
    (83, "/search", {"texts": ["hi"], "evil": 1}),
    (83, "/next", {"k": 3}),
    (84, "/search", {"texts": [""]}),
    (84, "/search", {"texts": []}),
    (84, "/generate", {"prompt": ""}),
    (85, "/search", {"vectors": [[0.1] * DIM], "k": 0}),
    (85, "/search", {"vectors": [[0.1] * DIM], "k": -1}),
    (85, "/search", {"vectors": [[0.1] * DIM], "k": HUGE}),
    (85, "/generate", {"prompt": "x", "steps": 10**6}),
    (85, "/generate", {"prompt": "x", "k": HUGE}),
    (86, "/search", {"vectors": [[0.1] * 10]}),
    (86, "/search", {"vectors": [[0.0] * DIM]}),
    (87, "/search", {"vectors": [[1e308] * DIM], "k": 3}),
    (87, "/search", {"vectors": [[0.1] * (DIM - 1) + [-1e39]], "k": 3}),
    (87, "/search", {"vectors": [[1e-46] * DIM], "k": 3}),
    (88, "/search", {"texts": ["x" * 4001]}),
    (88, "/search", {"texts": ["x"] * 65}),
    (88, "/next", {"context_ids": [10**9]}),
    (88, "/next", {"context_ids": [-1]}),
    (88, "/next", {"context_ids": [1], "profile": "../../etc/passwd"}),
])
def test_rows81_88_bad_requests_are_422(served: Any, row: int, path: str, body: Any) -> None:
    _, client = served
    r = _post(client, path, body)
    assert r.status_code == 422, (row, r.status_code, r.text[:300])
    assert "Traceback" not in r.text and client.get("/healthz").status_code == 200


def test_row86_nan_is_422(served: Any) -> None:
    _, client = served
    r = _post(client, "/search", '{"vectors": [[NaN' + ", 0.1" * (DIM - 1) + "]]}")
    assert r.status_code == 422


def test_row87_huge_vectors_say_why(served: Any) -> None:
    bank, client = served
    r = _post(client, "/search", {"vectors": [[1e308] * DIM], "k": 3})
    assert r.status_code == 422 and "beyond float32's range" in r.json()["detail"][0]["msg"]
    r = _post(client, "/search", {"vectors": [[1e-46] * DIM], "k": 3})
    assert r.status_code == 422 and "all zeros in float32" in r.json()["detail"][0]["msg"]
    # large but representable: the norm is taken in float64, so the query is chunk 5's own direction
    v = bank.vectors_f32([5])[0].astype(np.float64) * 3e38 / np.abs(bank.vectors_f32([5])[0]).max()
    r = _post(client, "/search", {"vectors": [v.tolist()], "k": 3})
    assert r.status_code == 200 and r.json()["results"][0][0]["id"] == 5
    tiny = (bank.vectors_f32([7])[0].astype(np.float64) * 1e-30).tolist()  # its float32 squares underflow
    r = _post(client, "/search", {"vectors": [tiny], "k": 3})
    assert r.status_code == 200 and r.json()["results"][0][0]["id"] == 7


def test_unit_vectors_unit_and_float32() -> None:
    from vecrag.serve.schemas import check_dim, unit_vectors

    vs = [[3e38, 3e38, 0.0], [1e-30, 0.0, 0.0]]
    assert check_dim(vs, 3) == []
    u = unit_vectors(vs)
    assert u.dtype == np.float32 and np.allclose(np.linalg.norm(u, axis=1), 1.0)


def test_row85_max_points_a_billion_is_422(served: Any) -> None:
    _, client = served
    assert client.get(f"/api/runs/good/log?max_points={HUGE}").status_code == 422
    assert client.get("/api/runs/good/log?max_points=1").status_code == 422


def test_row89_nesting_bomb_and_row90_big_body(served: Any) -> None:
    _, client = served
    r = _post(client, "/search", "[" * 100_000)
    assert 400 <= r.status_code < 500
    r = _post(client, "/search", json.dumps({"texts": ["x" * 1000] * 300}))  # ~300 KB > the 256 KB cap
    assert r.status_code == 413
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("path", [
    "/api/runs/../../etc/passwd/log", "/api/runs/%2e%2e%2f%2e%2e%2fetc%2fpasswd/log", "/api/runs/%252e%252e/log",
    "/api/runs//etc/log", "/api/runs/%2Fetc%2Fpasswd/log",                                             # row 92
    "/api/runs/good/metrics/..%2Flog.jsonl", "/api/runs/good/metrics/%2Fetc%2Fpasswd",                 # row 93
    "/api/runs/evil/metrics/s.json", "/api/runs/linkdir/log", "/api/runs/linkdir/metrics/secret.json",  # row 94
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",                                                        # row 96
])
def test_rows92_96_traversal_and_symlinks_are_404(served: Any, path: str) -> None:
    _, client = served
    r = client.get(path)
    assert r.status_code == 404 and SECRET not in r.text and "root:" not in r.text


def test_row95_a_log_linked_outside_is_neither_served_nor_measured(served: Any) -> None:
    _, client = served
    runs = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
    assert runs["evil"]["has_log"] is False and runs["evil"]["log_bytes"] == 0
    assert runs["evil"]["modified"] != OUTSIDE_MTIME  # its metrics/ folder's time, not the outside file's
    assert runs["evil"]["metrics"] == []
    assert runs["good"]["has_log"] is True and runs["good"]["log_bytes"] > 0 and runs["good"]["metrics"]
    assert "linkdir" not in runs
    r = client.get("/api/runs/evil/log")
    assert r.status_code == 200 and r.json()["records"] == [] and SECRET not in r.text


def test_row100_serve_refuses_a_missing_bank_and_a_non_run(untouched: Bank, capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    rc, _, err = cli(capsys, "serve", tmp_path / "nope", "--no-encoder")
    assert rc == 2 and "no such bank directory" in error_line(err)
    rc, _, err = cli(capsys, "serve", untouched.path, "--no-encoder", "--lvm", tmp_path)
    assert rc == 2 and "not an LVM run directory" in error_line(err)


def test_memory_limit_is_real() -> None:
    """The limit the heavy cases run under does stop a 10^9-deep search (guards the guard)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import resource, numpy as np
        resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_BYTES}, {LIMIT_BYTES}))
        try:
            np.full((1, {HUGE}), -1, np.int64)
        except MemoryError:
            raise SystemExit(3)
    """)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
