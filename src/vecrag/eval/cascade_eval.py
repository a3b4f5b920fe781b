"""Cascade evaluation: Hit@{1,5,10} and MRR@10 of every stage, on the same queries, against the FULL bank.

Rows (all on the same samples, same hit rules: the context's own ids are excluded, a chunk with the
target's text counts as a hit):

- ``baseline:last`` / ``baseline:ewma``  heuristic query -> top-k
- ``tower``            query tower -> top-k (also ``R@K``: the ceiling of every re-rank below)
- ``lvm-query``        the LVM prediction used as the query -> top-k
- ``tower>lvm-rerank`` tower top-K re-ranked by cos(v_hat, cand) alone (the original design's cascade)
- ``tower>fused``      tower top-K re-ranked by w_tower * tower score + w_lvm * cos(v_hat, cand)
- ``tower>lane``       tower top-K with only the lane bonus (+lambda in the context's lane)
- ``tower>lane(article)``  the same with the article's own lane label as the context lane: an upper bound
- ``cascade``          fused + lane: the full cascade used by ``vecrag generate``

The context lane is predicted from the context vectors alone (:func:`vecrag.bank.lanes.predict_lanes` with
:func:`vecrag.bank.lanes.context_lane_classifier`: the lane prototypes for description-built lanes, else
centroids of TRAIN-split chunks), as ``vecrag generate`` does for a prompt. The article's own label is not
used for the main rows: lanes built from vectors (``--lanes default``, ``kmeans:K``) are chosen from the
mean of ALL the article's chunks, the target included, so the label leaks a little of the target into the
query; a live prompt has no such label. ``lane_accuracy`` reports how often the prediction equals the article's label.

``never_back`` (``vecrag eval cascade --never-back``): every row also drops the chunks of the continued article
before the context, as the context itself is dropped: a continuation never goes back in its article. On wiki-full
about half of the same-article misses rank such a chunk first (docs/results.md). The searches go ``BACK_DEPTH``
results deeper to make room; where more than that many of them outrank the target, the row is a lower bound.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from vecrag.bank.lanes import context_lane_classifier, lane_codes_of, predict_lanes
from vecrag.bank.sequences import Samples, gather_context
from vecrag.bank.store import Bank
from vecrag.decode.cascade import BACK_DEPTH, fuse, lane_bonus, top_by
from vecrag.scoring.metrics import first_hit_rank, format_table, kept_results, recall_table
from vecrag.scoring.predictors import HeuristicPredictor, Predictor

HIT_KS = (1, 5, 10)
HIT_RULES = "context ids excluded; a retrieved chunk with the target's text counts as a hit"
NEVER_BACK_RULE = "; the article's chunks before the context excluded too (never going back)"


def hit_table(ranks: np.ndarray, K: int | None = None) -> dict[str, Any]:
    t = recall_table(ranks, HIT_KS + ((K,) if K else ()), mrr_k=10)
    out: dict[str, Any] = {"n_queries": t["n_queries"], "MRR@10": t["MRR@10"], "median_rank": t["median_rank"]}
    for k in HIT_KS:
        out[f"Hit@{k}"], out[f"Hit@{k}_ci"] = t[f"R@{k}"], t[f"R@{k}_ci"]
    if K:
        out[f"R@{K}"] = t[f"R@{K}"]
    return out


def predict(pred: Predictor, ctx: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Run a predictor on the last ``pred.context_len`` columns of a right-aligned context."""
    Lp = min(int(pred.context_len), ctx.shape[1])
    return np.asarray(pred(ctx[:, -Lp:], mask[:, -Lp:]), np.float32)


def context_len(*preds: Predictor) -> int:
    return max(int(p.context_len) for p in preds)


def run_cascade_eval(bank: Bank, samples: Samples, lvm: Predictor, tower: Predictor, index: Any, *, K: int = 500,
                     k: int = 10, w_tower: float = 1.0, w_lvm: float = 1.0, lane_lambda: float = 0.05,
                     baselines: tuple[Predictor, ...] | None = None, batch: int = 64,
                     w_lvm_grid: tuple[float, ...] = (), progress: bool = False,
                     never_back: bool = False) -> dict[str, Any]:
    """Ranks for every stage; returns the report dict (rows of Hit@k / MRR@10 with CIs)."""
    L = context_len(lvm, tower)
    extra = L + (BACK_DEPTH if never_back else 0)
    if baselines is None:
        baselines = (HeuristicPredictor("last", context_len=L), HeuristicPredictor("ewma", 0.5, context_len=L))
    tg = bank.text_group
    codes, _ = lane_codes_of(bank.lanes)
    has_lanes = bool((codes >= 0).any())
    centroids, classifier = context_lane_classifier(bank)
    n = len(samples)
    names = [f"baseline:{b.name.removeprefix('heuristic:')}" for b in baselines] + [
        "tower", "lvm-query", "tower>lvm-rerank", "tower>fused", "tower>lane", "tower>lane(article)", "cascade"]
    grid = {f"tower>fused(w_lvm={w:g})": float(w) for w in w_lvm_grid}
    names += list(grid)
    lane_hits = lane_total = 0
    ranks = {m: np.full(n, -1, np.int64) for m in names}
    tower_rank_K = np.full(n, -1, np.int64)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="eval cascade", unit="q")
    for s in range(0, n, batch):
        sl = slice(s, min(n, s + batch))
        ctx_ids = samples.context_ids(L, sl)
        tgt = samples.target[sl]
        ctx, mask = gather_context(bank.vectors, ctx_ids)
        start = samples.start[sl] if never_back else None
        rank = partial(first_hit_rank, target=tgt, ctx_ids=ctx_ids, text_group=tg, start=start)
        for b, name in zip(baselines, names, strict=False):
            _, ids = index.search(predict(b, ctx, mask), k + extra)
            ranks[name][sl] = rank(ids)
        v_hat = predict(lvm, ctx, mask)
        _, ids = index.search(v_hat, k + extra)
        ranks["lvm-query"][sl] = rank(ids)
        t_scores, ids = index.search(predict(tower, ctx, mask), K + extra)
        t_scores = np.asarray(t_scores, np.float32)
        if never_back:  # the re-rank pool: the first K + L results the rule keeps, as many as without it
            keep = kept_results(ids, start=start, target=tgt)
            ids = np.where(keep & (np.cumsum(keep, axis=1) <= K + L), ids, -1)
        r = rank(ids)
        ranks["tower"][sl] = r
        tower_rank_K[sl] = r
        cand = np.asarray(bank.vectors[np.maximum(ids, 0).reshape(-1)], np.float32).reshape(*ids.shape, -1)
        lvm_s = np.einsum("nkd,nd->nk", cand, v_hat)
        article_lane = codes[np.maximum(ctx_ids[:, -1], 0)]
        ctx_lane = predict_lanes(ctx, mask, centroids)
        lane_hits += int(((ctx_lane == article_lane) & (article_lane >= 0)).sum())
        lane_total += int((article_lane >= 0).sum())
        bonus = lane_bonus(ids, codes, ctx_lane, lane_lambda)
        variants = {"tower>lvm-rerank": fuse(t_scores, lvm_s, ids, w_tower=0.0, w_lvm=1.0),
                    "tower>fused": fuse(t_scores, lvm_s, ids, w_tower=w_tower, w_lvm=w_lvm),
                    "tower>lane": fuse(t_scores, lvm_s, ids, w_tower=1.0, w_lvm=0.0, lane_bonus=bonus),
                    "tower>lane(article)": fuse(t_scores, lvm_s, ids, w_tower=1.0, w_lvm=0.0,
                                                lane_bonus=lane_bonus(ids, codes, article_lane, lane_lambda)),
                    "cascade": fuse(t_scores, lvm_s, ids, w_tower=w_tower, w_lvm=w_lvm, lane_bonus=bonus)}
        variants.update({name: fuse(t_scores, lvm_s, ids, w_tower=w_tower, w_lvm=w) for name, w in grid.items()})
        for name, sc in variants.items():
            order = top_by(sc, ids.shape[1])
            ranks[name][sl] = rank(np.take_along_axis(ids, order, 1))
        if bar is not None:
            bar.update(len(tgt))
    if bar is not None:
        bar.close()
    rows = {m: hit_table(ranks[m]) for m in names}
    rows["tower"] = hit_table(tower_rank_K, K)
    return {"bank": str(bank.path), "split": samples.split, "n_queries": n, "context_len": L, "K": K, "k": k,
            "fusion": {"w_tower": w_tower, "w_lvm": w_lvm, "lane_lambda": lane_lambda},
            "lvm": lvm.name, "retriever": tower.name, "never_back": never_back,
            "hit_rules": HIT_RULES + (NEVER_BACK_RULE if never_back else ""), "rows": rows,
            "lanes": has_lanes, "lane_accuracy": lane_hits / lane_total if lane_total else None,
            "lane_classifier": classifier}


def format_cascade(report: dict[str, Any]) -> str:
    head = (f"cascade eval: {report['bank']} split={report['split']} queries={report['n_queries']} "
            f"L={report['context_len']} K={report['K']} k={report['k']} lvm={report['lvm']} "
            f"retriever={report['retriever']}\nfusion {report['fusion']}"
            + (f" from {report['fusion_source']}" if report.get("fusion_source") else "")
            + f"; hit rules: {report['hit_rules']}"
            + ("" if report["lanes"] else "\n(the bank has no lanes: the lane stages equal their lane-less twins)"))
    K = report["K"]
    tail = f"\ntower R@{K} (ceiling of every re-rank of its top-K): {100 * report['rows']['tower'][f'R@{K}']:.2f}%"
    if report.get("lane_accuracy") is not None:
        tail += (f"\ncontext lane predicted from the context vectors ({report.get('lane_classifier')}): equals the "
                 f"article's lane for {100 * report['lane_accuracy']:.1f}% of queries; tower>lane(article) uses the "
                 "article's label, which vector-built lanes derive from all its chunks incl. the target (upper bound)")
    return head + "\n" + format_table(report["rows"], ("Hit@1", "Hit@5", "Hit@10", "MRR@10")) + tail


def fusion_grid(bank: Bank, samples: Samples, lvm: Predictor, tower: Predictor, index: Any, *, K: int = 500,
                w_lvm_grid: tuple[float, ...] = (0.0, 1.0), lane_grid: tuple[float, ...] = (0.0,),
                batch: int = 64, progress: bool = False) -> dict[tuple[float, float], dict[str, Any]]:
    """Hit@k / MRR@10 of the full cascade (w_tower 1, ``w_lvm``, lane bonus ``lambda``) at every grid point,
    from one tower search per batch (the shared hit rules; the context lane predicted from the context)."""
    L = context_len(lvm, tower)
    tg = bank.text_group
    codes, _ = lane_codes_of(bank.lanes)
    centroids, _ = context_lane_classifier(bank)
    n = len(samples)
    points = [(float(w), float(lam)) for w in w_lvm_grid for lam in lane_grid]
    ranks = {pt: np.full(n, -1, np.int64) for pt in points}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="fusion grid", unit="q")
    for s in range(0, n, batch):
        sl = slice(s, min(n, s + batch))
        ctx_ids = samples.context_ids(L, sl)
        tgt = samples.target[sl]
        ctx, mask = gather_context(bank.vectors, ctx_ids)
        rank = partial(first_hit_rank, target=tgt, ctx_ids=ctx_ids, text_group=tg)
        v_hat = predict(lvm, ctx, mask)
        t_scores, ids = index.search(predict(tower, ctx, mask), K + L)
        t_scores = np.asarray(t_scores, np.float32)
        cand = np.asarray(bank.vectors[np.maximum(ids, 0).reshape(-1)], np.float32).reshape(*ids.shape, -1)
        lvm_s = np.einsum("nkd,nd->nk", cand, v_hat)
        unit = lane_bonus(ids, codes, predict_lanes(ctx, mask, centroids), 1.0)
        for w, lam in points:
            sc = fuse(t_scores, lvm_s, ids, w_tower=1.0, w_lvm=w,
                      lane_bonus=None if unit is None or lam == 0.0 else lam * unit)
            ranks[(w, lam)][sl] = rank(np.take_along_axis(ids, top_by(sc, ids.shape[1]), 1))
        if bar is not None:
            bar.update(len(tgt))
    if bar is not None:
        bar.close()
    return {pt: {**hit_table(r), "hits10": (r >= 0) & (r < 10)} for pt, r in ranks.items()}
