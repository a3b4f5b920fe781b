"""Evaluate a trained two-tower retriever next to every baseline, on the same samples, in the same run.

The tower's queries and each baseline's are scored by :func:`vecrag.scoring.ranks.retrieve_ranks` with
the shared hit rules (context ids excluded from the results; a chunk with the target's text is a hit)
against the FULL bank. With an ``mlp`` doc tower the bank is re-encoded first and searched exactly (see
:mod:`vecrag.models.towers` for the cost); the baselines always search the raw bank.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vecrag.bank.sequences import Samples, before_target, gather_context
from vecrag.bank.store import Bank
from vecrag.errors import VecragError
from vecrag.runs.load import check_bank, load_retriever
from vecrag.scoring.metrics import DEFAULT_KS

log = logging.getLogger(__name__)


@torch.no_grad()
def tower_queries(model, bank: Bank, samples: Samples, L: int, *, device: str = "cpu",
                  batch: int = 1024) -> np.ndarray:
    """float32 [n, D] queries from the query tower over each sample's last-L context."""
    out = []
    for s in range(0, len(samples), batch):
        ctx, mask = gather_context(bank.vectors, samples.context_ids(L, slice(s, s + batch)))
        out.append(model.query(torch.from_numpy(ctx).to(device), torch.from_numpy(mask).to(device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, bank.dim), np.float32)


def doc_index(model, bank: Bank, raw_index: Any, device: str = "cpu") -> Any:
    """The raw bank's index for an identity doc tower; else an exact index over the re-encoded bank."""
    from vecrag.index.search import ExactTorchIndex

    if model.doc.is_identity:
        return raw_index
    t = time.perf_counter()
    enc = model.doc.encode_bank(bank.vectors, device=device).cpu().numpy()
    log.info("re-encoded %d bank vectors with the mlp doc tower in %.1f s", bank.n, time.perf_counter() - t)
    return ExactTorchIndex(enc, device=device)


def evaluate_retriever(run: str | Path, bank: Bank | None = None, *, split: str = "test",
                       max_queries: int | None = None, checkpoint: str = "best", ks: tuple[int, ...] = DEFAULT_KS,
                       backend: str = "auto", device: str = "cpu", baselines: bool = True,
                       text_baselines: bool = False, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """The report dict (``methods``: tower first, then every baseline) of ``vecrag eval retriever``."""
    from vecrag.bank.sequences import make_samples
    from vecrag.eval.baselines import baselines_report, run_baselines, vector_methods
    from vecrag.index.load import open_index
    from vecrag.scoring.evaluators import RetrievalEvaluator

    cfg, model, info = load_retriever(run, checkpoint, device)
    bank = bank if bank is not None else Bank.open(cfg.bank)
    dim = int(model.query.dim)
    check_bank(Path(run), bank, dim)
    L = cfg.train.context
    samples = make_samples(bank, split, min_context=cfg.min_context, max_samples=max_queries, seed=seed)
    if len(samples) == 0:
        raise VecragError(f"no {split} samples with at least {cfg.min_context} context chunk(s)", path=bank.path,
                          hint="use another --split or a bank with more articles")
    ks = tuple(sorted(set(int(k) for k in ks)))
    raw = open_index(bank, backend=backend, device=device)
    t = time.perf_counter()
    q = tower_queries(model, bank, samples, L, device=device)
    dindex = doc_index(model, bank, raw, device)
    # "where the top 10 goes" for the tower and its anchor heuristic reads their recall searches' results when
    # those are deep enough (else where_misses searches again below)
    a, alpha = cfg.model.anchor, cfg.model.alpha
    anchor = f"{a}-{alpha:g}" if a == "ewma" else a
    deep = baselines and ks[-1] + L >= MissTally(samples, L, bank).depth
    tally = MissTally(samples, L, bank) if deep else None
    atally = MissTally(samples, L, bank) if deep and anchor in vector_methods() else None
    # the evaluator training validation scores with, on this split's samples
    table = RetrievalEvaluator(bank, samples, L, dindex, ks=ks)(q, on_ids=tally.add if tally else None)
    name = f"tower-{cfg.model.kind}({info['checkpoint'].removesuffix('.pt')})"
    elapsed = round(time.perf_counter() - t, 3)
    rows: dict[str, dict[str, Any]] = {name: {**table, "elapsed_s": elapsed}}
    if baselines:
        rows.update(run_baselines(bank, samples, L, ks, index=raw, text_baselines=text_baselines, progress=progress,
                                  on_ids={anchor: atally.add} if atally else None))
    report = baselines_report(bank, split, L, ks, rows, include_context=False, text_hits=True, index=raw,
                              run=str(run), checkpoint=info, tower=name, anchor=cfg.model.anchor,
                              created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    report["gap_closed"] = gap_closed(rows, name)
    if baselines:  # where the tower's top 10 goes, next to its anchor heuristic's, on the same queries
        report["misses"] = {name: tally.result() if tally else where_misses(dindex, q, samples, L, bank),
                            anchor: atally.result() if atally else where_misses(raw, anchor_queries(
                                bank, samples, L, a, alpha), samples, L, bank)}
    return report


def anchor_queries(bank: Bank, samples: Samples, L: int, anchor: str, alpha: float) -> np.ndarray:
    """The anchor heuristic's query for every sample (4,096 contexts at a time)."""
    from vecrag.scoring.heuristics import heuristic_query

    return np.concatenate([heuristic_query(*gather_context(bank.vectors, samples.context_ids(L, slice(s, s + 4096))),
                                           anchor, alpha) for s in range(0, len(samples), 4096)])


class MissTally:
    """Where the top-``k`` goes (context ids excluded, same text = hit, as in the recall tables): the share of
    queries whose target is in it (``hit``), whose target is not but another chunk of the target's article is
    (``same_article``: the tower found the article, not the position), and neither (``elsewhere``);
    ``article_chance`` is R@k of a query that knew the article and ranked its non-context chunks at random;
    ``offsets``: for the ``same_article`` queries, where the article's best-ranked chunk sits relative to the target
    (chunk id minus target id: +1 is the chunk after the target; "before" lies before the context window);
    ``hit_forward``: R@k when the chunks of the article before the context are excluded too (a continuation that
    never goes back; ``back`` results deeper, so a lower bound where more than ``back`` of them outrank).

    Fed batch by batch with search results at least ``depth`` deep (``add``), e.g. by ``retrieve_ranks``'
    ``on_ids`` so that the recall table and this share one search."""

    def __init__(self, samples: Samples, L: int, bank: Bank, *, k: int = 10, back: int = 256):
        self.samples, self.L, self.bank, self.k = samples, L, bank, k
        self.depth = min(k + L + back, bank.n)
        n = len(samples)
        self.hit, self.fwd, self.art = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
        self.off = np.zeros(n, np.int64)

    def add(self, sl: slice, ids: np.ndarray) -> None:
        """Results ``ids`` [len(sl), >= depth] of the samples ``sl``, best first."""
        from vecrag.scoring.metrics import first_hit_rank, kept_results

        smp, k, tg = self.samples, self.k, self.bank.text_group
        ids = ids[:, :self.depth]
        kept = kept_results(ids, smp.context_ids(self.L, sl))
        valid = kept & (np.cumsum(kept, axis=1) <= k)  # the first k kept results
        self.hit[sl] = first_hit_rank(np.where(valid, ids, -1), smp.target[sl], text_group=tg) >= 0
        kept &= ~before_target(ids, smp.start[sl], smp.target[sl])  # never go back
        kept &= np.cumsum(kept, axis=1) <= k
        self.fwd[sl] = first_hit_rank(np.where(kept, ids, -1), smp.target[sl], text_group=tg) >= 0
        same = (self.bank.article_start[np.where(valid, ids, 0)] == smp.start[sl][:, None]) & valid
        self.art[sl] = same.any(axis=1)
        first_same = ids[np.arange(len(ids)), same.argmax(axis=1)]  # the article's best-ranked chunk
        self.off[sl] = np.where(self.art[sl], first_same - smp.target[sl], 0)

    def result(self) -> dict[str, Any]:
        smp, hit, art, n = self.samples, self.hit, self.art, len(self.samples)
        first = self.bank.articles.column("first_chunk").to_numpy()  # increasing: an article's chunks are contiguous
        art_len = self.bank.articles.column("n_chunks").to_numpy()[np.searchsorted(first, smp.start)]
        cands = art_len - smp.context_lengths(self.L)  # the target and the article's other non-context chunks
        d = max(n, 1)
        return {"k": self.k, "n_queries": n, "hit": float(hit.sum() / d),
                "same_article": float((art & ~hit).sum() / d), "elsewhere": float((~art & ~hit).sum() / d),
                "article_chance": float(np.minimum(1.0, self.k / np.maximum(cands, 1)).mean()) if n else 0.0,
                "offsets": offset_shares(self.off[art & ~hit]), "hit_forward": float(self.fwd.sum() / d)}


def where_misses(index: Any, queries: np.ndarray, samples: Samples, L: int, bank: Bank, *, k: int = 10,
                 back: int = 256, batch: int = 2048) -> dict[str, Any]:
    """:class:`MissTally` of ``index``'s results for ``queries`` (one search, ``depth`` deep)."""
    tally = MissTally(samples, L, bank, k=k, back=back)
    for s in range(0, len(samples), batch):
        sl = slice(s, min(len(samples), s + batch))
        tally.add(sl, index.search(np.ascontiguousarray(queries[sl], dtype=np.float32), tally.depth)[1])
    return tally.result()


OFFSET_BUCKETS = (("+1", 1, 1), ("+2", 2, 2), ("+3..+5", 3, 5), (">+5", 6, None), ("before", None, -1))


def offset_shares(off: np.ndarray) -> dict[str, float]:
    """Share of same-article misses per bucket of (best-ranked same-article chunk id - target id)."""
    d = max(len(off), 1)
    out = {}
    for name, lo, hi in OFFSET_BUCKETS:
        m = np.ones(len(off), bool)
        if lo is not None:
            m &= off >= lo
        if hi is not None:
            m &= off <= hi
        out[name] = float(m.sum() / d)
    return out


def format_misses(report: dict[str, Any]) -> str:
    rows = report.get("misses", {})
    if not rows:
        return ""
    k = next(iter(rows.values()))["k"]
    lines = [f"where the top {k} goes (% of queries): target in it | target's article but not the target | "
             f"neither; a query that knew the article and ordered its chunks at random: R@{k}"]
    for name, m in rows.items():
        lines.append(f"  {name:<28} {100 * m['hit']:6.2f} | {100 * m['same_article']:6.2f} | "
                     f"{100 * m['elsewhere']:6.2f}   (article at random: {100 * m['article_chance']:.2f})")
    lines.append("the article's best chunk in a same-article miss, relative to the target (% of those misses): "
                 + " | ".join(name for name, _, _ in OFFSET_BUCKETS) + f" (before: ahead of the context); R@{k} if "
                 "the article's chunks before the context were excluded too (never going back)")
    for name, m in rows.items():
        if "offsets" in m:
            lines.append(f"  {name:<28} " + " | ".join(f"{100 * v:6.2f}" for v in m["offsets"].values())
                         + f"   (never going back: R@{k} {100 * m['hit_forward']:.2f})")
    return "\n".join(lines)


def gap_closed(rows: dict[str, dict[str, Any]], tower: str) -> dict[str, Any]:
    """Per Recall@K: the best non-oracle baseline and the share of its gap to the oracle the tower closes."""
    out: dict[str, Any] = {}
    base = {n: r for n, r in rows.items() if n not in (tower, "oracle") and "skipped" not in r}
    if not base or "oracle" not in rows:
        return out
    for key in (k for k in rows[tower] if k.startswith("R@") and not k.endswith("_ci")):
        best = max(base, key=lambda n: base[n][key])
        b, o, t = base[best][key], rows["oracle"][key], rows[tower][key]
        out[key] = {"best_baseline": best, "baseline": b, "tower": t, "oracle": o,
                    "share": (t - b) / (o - b) if o > b else float("nan")}
    return out


def format_gap(report: dict[str, Any]) -> str:
    lines = []
    for key, g in report.get("gap_closed", {}).items():
        lines.append(f"{key}: tower {100 * g['tower']:.2f}% vs best baseline {g['best_baseline']} "
                     f"{100 * g['baseline']:.2f}% (oracle {100 * g['oracle']:.2f}%): gap closed "
                     + (f"{100 * g['share']:.1f}%" if g["share"] == g["share"] else "n/a (baseline = oracle)"))
    return "\n".join(lines)
