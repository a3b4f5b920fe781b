"""The yardstick: the query heuristics and two text-level peers, against the FULL bank.

Every method is scored by :func:`retrieve_ranks` with the same hit rules (``vecrag.scoring.metrics``): the
context's own chunk ids are removed from the results (search ``k + L``, then drop them) unless
``include_context``; a chunk whose text equals the target's text counts as a hit unless ``text_hits`` is
off. Later models (retrievers, LVMs) call :func:`retrieve_ranks` on the same samples, in the same process,
so their numbers are comparable with these rows.

Methods:
- ``last``, ``mean``, ``ewma-<alpha>`` (weights ``(1 - alpha) ** j`` for the chunk ``j`` steps back):
  heuristic query vectors over the last ``L`` context vectors;
- ``oracle``: the target's own vector (an upper bound; below 100 % only through ties and duplicates);
- ``bm25-last<n>``: BM25 (bm25s) over all chunk texts, queried with the concatenated text of the last
  ``n`` context chunks (results with score 0 are not retrieved);
- ``encoder-text-last<n>``: the bank's encoder applied to that same concatenated text, as one query.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vecrag.bank.sequences import Samples, gather_context
from vecrag.bank.store import Bank
from vecrag.errors import VecragError
from vecrag.scoring.heuristics import heuristic_query
from vecrag.scoring.metrics import DEFAULT_KS, first_hit_rank, format_table, recall_table
from vecrag.scoring.ranks import batch_rows, context_start, retrieve_ranks, search_depth

log = logging.getLogger(__name__)

EWMA_ALPHAS = (0.5, 0.1, 0.05)
BM25_DIR = "bm25"
BM25_STOPWORDS = "en"


def context_texts(bank: Bank, samples: Samples, last: int) -> list[str]:
    """The concatenated text of each sample's last ``last`` context chunks (oldest first)."""
    texts = bank.texts
    ids = samples.context_ids(last)
    return [" ".join(texts[i] for i in row if i >= 0) for row in ids.tolist()]


class BM25Search:
    """bm25s over every chunk text of the bank; ``search(texts, k)`` -> ids [n, k] (-1 where score 0)."""

    def __init__(self, bank: Bank, *, cache: bool = True, progress: bool = False):
        import bm25s

        self.bank, self.progress = bank, progress
        key = {"chunks_sha256": bank.manifest.get("checksums", {}).get("chunks.parquet"), "n": bank.n,
               "stopwords": BM25_STOPWORDS, "bm25s": bm25s.__version__}
        cdir = bank.path / BM25_DIR
        self.retriever = None
        if cache and (cdir / "vecrag-key.json").exists():
            with contextlib.suppress(Exception):
                if json.loads((cdir / "vecrag-key.json").read_text()) == key:
                    self.retriever = bm25s.BM25.load(str(cdir), show_progress=False)
        if self.retriever is None:
            tokens = bm25s.tokenize(bank.texts, stopwords=BM25_STOPWORDS, show_progress=progress)
            self.retriever = bm25s.BM25()
            self.retriever.index(tokens, show_progress=progress)
            if cache:
                self._save(cdir, key)

    def _save(self, cdir: Path, key: dict[str, Any]) -> None:
        """Save to a temp directory, then swap it in (a reader never sees a half-written cache)."""
        tmp = cdir.with_name(f".{cdir.name}.tmp-{time.time_ns()}")
        try:
            self.retriever.save(str(tmp), show_progress=False)
            (tmp / "vecrag-key.json").write_text(json.dumps(key))
            old = cdir.with_name(f".{cdir.name}.old-{time.time_ns()}")
            if cdir.exists():
                cdir.rename(old)
            tmp.rename(cdir)
            shutil.rmtree(old, ignore_errors=True)
        except OSError as e:  # a read-only bank still evaluates; it just rebuilds BM25 next time
            log.warning("could not cache BM25 under %s (%s)", cdir, e)
            shutil.rmtree(tmp, ignore_errors=True)

    def search(self, texts: list[str], k: int) -> np.ndarray:
        import bm25s

        n = len(texts)
        out = np.full((n, k), -1, dtype=np.int64)
        kk = min(k, self.bank.n)
        if n == 0 or kk == 0:
            return out
        q = bm25s.tokenize(texts, stopwords=BM25_STOPWORDS, return_ids=False, show_progress=False)
        ids, scores = self.retriever.retrieve(q, k=kk, show_progress=self.progress, n_threads=0)
        ids = np.where(scores > 0, ids, -1)
        out[:, :kk] = ids
        return out


def _text_ranks(ids: np.ndarray, samples: Samples, L: int, include_context: bool, text_hits: bool,
                bank: Bank) -> np.ndarray:
    return first_hit_rank(ids, samples.target, text_group=bank.text_group if text_hits else None,
                          start=None if include_context else context_start(samples, L))


def _shifted(hook: Callable[[slice, np.ndarray], None], start: int) -> Callable[[slice, np.ndarray], None]:
    """``hook`` for rows counted from ``start`` (a sub-batch's rows -> the whole sample set's)."""
    return lambda rows, ids: hook(slice(start + rows.start, start + rows.stop), ids)


def vector_methods(ewma_alphas: tuple[float, ...] = EWMA_ALPHAS) -> list[str]:
    """Names of the context-vector heuristics ``run_baselines`` measures (the oracle aside)."""
    return ["last", "mean", *[f"ewma-{a:g}" for a in ewma_alphas]]


def run_baselines(bank: Bank, samples: Samples, L: int, ks: tuple[int, ...] = DEFAULT_KS, *, index: Any = None,
                  include_context: bool = False, text_hits: bool = True, ewma_alphas: tuple[float, ...] = EWMA_ALPHAS,
                  oracle: bool = True, text_baselines: bool = True, bm25_last: int = 3, encoder: Any = None,
                  batch: int = 2048, progress: bool = True,
                  on_ids: dict[str, Callable[[slice, np.ndarray], None]] | None = None) -> dict[str, dict[str, Any]]:
    """Recall table per method (``recall_table`` plus ``elapsed_s``; ``skipped`` with a reason instead when
    a text baseline cannot run). ``index`` defaults to ``vecrag.index.load.open_index(bank)``. ``on_ids[method](rows,
    ids)`` sees that vector method's raw results (as ``retrieve_ranks``' ``on_ids``, rows of ``samples``)."""
    from tqdm import tqdm

    from vecrag.index.load import open_index

    if L < 1:
        raise VecragError(f"context length must be >= 1, got {L}", hint="--context 10")
    if len(samples) == 0:
        raise VecragError(f"no {samples.split or 'evaluation'} samples with at least one context chunk",
                          path=bank.path, hint="use a bank with more (or longer) articles, or another --split")
    ks = tuple(sorted(set(int(k) for k in ks)))
    kmax = ks[-1]
    index = index if index is not None else open_index(bank)
    methods = vector_methods(ewma_alphas) + (["oracle"] if oracle else [])
    ranks = {m: np.full(len(samples), -1, dtype=np.int64) for m in methods}
    elapsed = dict.fromkeys(methods, 0.0)
    n = len(samples)
    step = batch_rows(batch, L * bank.dim)  # the [rows, L, D] context of a batch stays within the budget
    for s in tqdm(range(0, n, step), desc="baselines", unit="batch", disable=not progress, leave=False):
        sl = slice(s, min(n, s + step))
        sub = samples.subset(sl)
        ctx, mask = gather_context(bank.vectors, sub.context_ids(L))
        for m in methods:
            t = time.perf_counter()
            if m == "oracle":
                q = bank.vectors_f32(sub.target)
            elif m.startswith("ewma-"):
                q = heuristic_query(ctx, mask, "ewma", float(m[5:]))
            else:
                q = heuristic_query(ctx, mask, m)
            hook = (on_ids or {}).get(m)
            ranks[m][sl] = retrieve_ranks(index, q, sub, L, kmax, include_context=include_context,
                                          text_hits=text_hits, bank=bank, batch=batch,
                                          on_ids=None if hook is None else _shifted(hook, s))
            elapsed[m] += time.perf_counter() - t
    rows = {m: {**recall_table(ranks[m], ks), "elapsed_s": round(elapsed[m], 3)} for m in methods}
    if text_baselines:
        rows.update(_text_rows(bank, samples, L, ks, index, include_context, text_hits, bm25_last, encoder,
                               batch, progress))
    return rows


def _text_rows(bank: Bank, samples: Samples, L: int, ks: tuple[int, ...], index: Any, include_context: bool,
               text_hits: bool, last: int, encoder: Any, batch: int, progress: bool) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    last = max(1, min(last, L))
    kk = search_depth(ks[-1] if include_context else ks[-1] + L, bank.n)
    texts = context_texts(bank, samples, last)
    t = time.perf_counter()
    bm25 = BM25Search(bank, progress=progress)
    step = batch_rows(batch, kk)
    ranks = [_text_ranks(bm25.search(texts[s:s + step], kk), samples.subset(slice(s, s + step)), L,
                         include_context, text_hits, bank) for s in range(0, len(texts), step)]
    rows[f"bm25-last{last}"] = {**recall_table(np.concatenate(ranks) if ranks else np.zeros(0, np.int64), ks),
                                "elapsed_s": round(time.perf_counter() - t, 3)}
    name = f"encoder-text-last{last}"
    t = time.perf_counter()
    try:
        if encoder is None:
            from vecrag.bank.encode import load_encoder

            encoder = load_encoder(bank.encoder["name"])
        if int(encoder.dim) != bank.dim:
            raise VecragError(f"encoder gives {encoder.dim}-D vectors, the bank is {bank.dim}-D")
    except (VecragError, ImportError, OSError) as e:
        log.warning("skipping %s: cannot load the bank's encoder %r (%s)", name, bank.encoder.get("name"), e)
        rows[name] = {"skipped": str(e).splitlines()[0]}
        return rows
    q = encoder.encode(texts, progress=progress)
    r = retrieve_ranks(index, q, samples, L, ks[-1], include_context=include_context, text_hits=text_hits,
                       bank=bank, batch=batch)
    rows[name] = {**recall_table(r, ks), "elapsed_s": round(time.perf_counter() - t, 3)}
    return rows


def baselines_report(bank: Bank, split: str, L: int, ks: tuple[int, ...], rows: dict[str, dict[str, Any]], *,
                     include_context: bool, text_hits: bool, index: Any = None, **extra: Any) -> dict[str, Any]:
    n = next((r["n_queries"] for r in rows.values() if "n_queries" in r), 0)
    return {"bank": str(bank.path), "bank_name": bank.path.name, "n_chunks": bank.n, "split": split,
            "context": L, "ks": list(ks), "n_queries": n,
            "hit_rules": {"exclude_context": not include_context, "text_hits": text_hits},
            "index": index.describe() if hasattr(index, "describe") else None,
            "encoder": bank.encoder.get("name"), "methods": rows, **extra}


def format_baselines(report: dict[str, Any]) -> str:
    """The table with a header naming the bank, split, number of queries and the hit rules."""
    ks = tuple(report["ks"])
    hr = report["hit_rules"]
    ci_k = 10 if 10 in ks else ks[0]
    lines = [f"bank {report['bank_name']} ({report['n_chunks']} chunks, {report['encoder']}), split "
             f"{report['split']}, {report['n_queries']} queries, context L={report['context']}",
             f"hit rules: context ids {'excluded' if hr['exclude_context'] else 'included'}; same text as target "
             f"{'counts as a hit' if hr['text_hits'] else 'does not count'}; "
             f"index {(report.get('index') or {}).get('type')}"]
    rows, skipped = {}, []
    for name, r in report["methods"].items():
        if "skipped" in r:
            skipped.append(f"{name}: skipped ({r['skipped']})")
            continue
        lo, hi = r[f"R@{ci_k}_ci"]
        rows[name] = {**r, f"R@{ci_k} 95% CI": f"{100 * lo:.1f}-{100 * hi:.1f}"}
    keys = (*[f"R@{k}" for k in ks], "MRR@10", "median_rank", f"R@{ci_k} 95% CI")
    lines.append(format_table(rows, keys))
    lines.append(f"(R@{ci_k} 95% CI: Wilson interval, in %; median rank is 1-based, inf when the target "
                 f"is missing for most queries)")
    lines.extend(skipped)
    return "\n".join(lines)
