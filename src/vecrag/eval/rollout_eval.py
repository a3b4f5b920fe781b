"""Generation rollouts on held-out articles: what a user of `vecrag generate` sees, measured.

For every held-out article with at least ``P + S`` chunks (or a seeded sample of them), the prompt is its first
``P`` chunks, given as bank ids or, with ``text_prompts``, as their text re-chunked and re-embedded (so prompt
echo by text is exercised). Each generator produces ``S`` steps; a step's *emitted chunk* is the chunk it shows
(the SNAPped chunk, or the text shown for BLEND / NOVEL) and its *emitted vector* the decision's vector.

Per step, against the true continuation (the article's chunks ``P .. P+S-1``; a chunk with the same text
counts as the same chunk everywhere):

- ``hit``       the emitted chunk is the true chunk at that step;
- ``forward``   it lies in the prompt's article after everything used so far (the prompt and earlier steps);
- ``repeat``    it was emitted earlier in the rollout;
- ``echo``      it is a prompt chunk (by id, or by text);
- ``cos``       cosine of the emitted vector to the true vector at that step;
- ``collapse``  cosine between consecutive emitted vectors (steps 2..S; near 1 = the rollout stopped moving);

and per rollout ``coverage``: the share of the true next ``S`` chunks found among the ``S`` emitted.
Intervals are 95 %: over articles (each article's rollout is one unit) for rollout means, Wilson for a
per-step share. Generators are built by the caller: the decoder `vecrag generate` uses, greedy
retrieval-only baselines (a query -> the best chunk not yet used, always SNAP), the LVM alone (NOVEL every
step) and ``None`` for the true continuation (the row that must score coverage 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vecrag.bank.store import Bank
from vecrag.decode.policy import KINDS
from vecrag.scoring.metrics import wilson

TRUTH = "TRUE"
METRICS = ("coverage", "hit", "forward", "repeat", "echo", "cos", "collapse")


@dataclass(frozen=True)
class Prompt:
    """One rollout's prompt and truth. ``ids`` is None for a text prompt (``texts`` are its chunks)."""

    start: int                   # the article's first chunk id
    vectors: np.ndarray          # [p, D] prompt vectors
    ids: list[int] | None        # bank ids of the prompt chunks (None: a text prompt)
    texts: list[str]             # the prompt's chunk texts
    truth: np.ndarray            # [S] the true continuation's chunk ids


def rollout_articles(bank: Bank, split: str, P: int, S: int, *, max_articles: int = 0,
                     seed: int = 0) -> np.ndarray:
    """First chunk ids of the ``split`` articles with at least ``P + S`` chunks (a seeded sample of
    ``max_articles`` of them when > 0), sorted."""
    t = bank.articles
    keep = np.isin(t.column("article_id").to_numpy(), bank.split_articles(split))
    first, count = t.column("first_chunk").to_numpy()[keep], t.column("n_chunks").to_numpy()[keep]
    starts = np.sort(first[count >= P + S]).astype(np.int64)
    if max_articles and len(starts) > max_articles:
        rng = np.random.default_rng(seed)
        starts = np.sort(rng.choice(starts, size=max_articles, replace=False))
    return starts


def make_prompts(bank: Bank, starts: np.ndarray, P: int, S: int,
                 embed: Callable[[str], tuple[list[str], np.ndarray]] | None = None) -> list[Prompt]:
    """Bank-id prompts, or with ``embed`` (text -> (chunks, vectors)) the first P chunks' text re-embedded."""
    out = []
    for s in starts:
        ids = list(range(int(s), int(s) + P))
        truth = np.arange(int(s) + P, int(s) + P + S, dtype=np.int64)
        if embed is None:
            out.append(Prompt(int(s), bank.vectors_f32(np.asarray(ids)), ids, [bank.texts[i] for i in ids], truth))
        else:
            chunks, vecs = embed(" ".join(bank.texts[i] for i in ids))
            out.append(Prompt(int(s), np.asarray(vecs, np.float32), None, chunks, truth))
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def score_rollout(bank: Bank, prompt: Prompt, emitted: list[int], vectors: np.ndarray) -> dict[str, np.ndarray]:
    """Per-step metrics of one rollout (module doc); ``emitted`` ids may be -1 (nothing shown)."""
    tg, start_of = bank.text_group, bank.article_start
    S = len(prompt.truth)
    e = np.asarray(emitted, np.int64)
    shown = e >= 0
    eg = np.where(shown, tg[np.maximum(e, 0)], -1)
    truth_g = tg[prompt.truth]
    P = len(prompt.ids) if prompt.ids is not None else int(prompt.truth[0]) - prompt.start
    prompt_ids = np.arange(prompt.start, prompt.start + P)
    prompt_groups = set(tg[prompt_ids].tolist())
    prompt_texts = {t.strip() for t in prompt.texts}
    furthest = prompt.start + P - 1
    seen: set[int] = set()
    out = {m: np.zeros(S) for m in ("hit", "forward", "repeat", "echo")}
    for t in range(S):
        if not shown[t]:
            continue
        i, g = int(e[t]), int(eg[t])
        out["hit"][t] = g == truth_g[t]
        same_article = int(start_of[i]) == prompt.start
        out["forward"][t] = same_article and i > furthest
        out["repeat"][t] = g in seen
        out["echo"][t] = (prompt.start <= i < prompt.start + P or g in prompt_groups
                          or bank.texts[i].strip() in prompt_texts)
        if same_article:
            furthest = max(furthest, i)
        seen.add(g)
    found = set(eg[shown].tolist())
    out["coverage"] = np.array([np.mean([g in found for g in truth_g])])
    u = _unit(np.asarray(vectors, np.float64))
    out["cos"] = np.einsum("sd,sd->s", u, _unit(bank.vectors_f32(prompt.truth).astype(np.float64)))
    out["collapse"] = np.concatenate([[np.nan], np.einsum("sd,sd->s", u[1:], u[:-1])]) if S > 1 else np.full(1, np.nan)
    return out


def run_generator(bank: Bank, decoder: Any, prompts: list[Prompt], S: int,
                  progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """Roll ``decoder`` (None = the true continuation) out on every prompt; per-article arrays."""
    n = len(prompts)
    arrs = {m: np.zeros((n, S)) for m in METRICS if m != "coverage"}
    arrs["coverage"] = np.zeros((n, 1))
    kinds: dict[str, int] = {k: 0 for k in (*KINDS, TRUTH)}
    lat: list[float] = []
    examples = []
    for a, pr in enumerate(prompts):
        if decoder is None:
            emitted, vecs = pr.truth.tolist(), bank.vectors_f32(pr.truth)
            kinds[TRUTH] += S
        else:
            steps = list(decoder.generate(list(pr.vectors), S, pr.ids, pr.texts))
            emitted = [st.text_id for st in steps]
            vecs = np.stack([st.decision.vector for st in steps]).astype(np.float32)
            for st in steps:
                kinds[st.decision.kind] += 1
                lat.append(float(st.latency_ms["total"]))
        sc = score_rollout(bank, pr, emitted, vecs)
        for m in METRICS:
            arrs[m][a] = sc[m]
        if a < 3:
            examples.append({"start": pr.start, "emitted": [int(x) for x in emitted]})
        if progress is not None:
            progress()
    return {"arrays": arrs, "kinds": kinds, "latency_ms": np.asarray(lat), "examples": examples}


def _mean_ci(per_article: np.ndarray) -> tuple[float, float, float]:
    """Mean over articles and its 95 % normal interval (per-article means are the units)."""
    x = per_article[np.isfinite(per_article)]
    if not len(x):
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    h = 1.96 * float(x.std(ddof=1)) / math.sqrt(len(x)) if len(x) > 1 else float("nan")
    return m, m - h, m + h


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    """One table row: every metric's mean and 95 % CI, per-step hit / cos, decision mix, step latency."""
    a = res["arrays"]
    row: dict[str, Any] = {"n_articles": int(a["hit"].shape[0])}
    for m in METRICS:
        per_article = np.nanmean(a[m], axis=1) if np.isfinite(a[m]).any() else np.full(len(a[m]), np.nan)
        mean, lo, hi = _mean_ci(per_article)
        row[m], row[f"{m}_ci"] = mean, [lo, hi]
    n = a["hit"].shape[0]
    row["hit_by_step"] = [float(x) for x in a["hit"].mean(axis=0)]
    row["hit_by_step_ci"] = [list(wilson(float(x), n)) for x in a["hit"].mean(axis=0)]
    cos_steps = [_mean_ci(a["cos"][:, t]) for t in range(a["cos"].shape[1])]
    row["cos_by_step"] = [c[0] for c in cos_steps]
    row["cos_by_step_ci"] = [[c[1], c[2]] for c in cos_steps]
    total = sum(res["kinds"].values())
    row["decisions"] = {k: v / total for k, v in res["kinds"].items() if v} if total else {}
    lat = res["latency_ms"]
    row["latency_ms"] = ({"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                          "mean": float(lat.mean())} if len(lat) else None)
    row["examples"] = res["examples"]
    return row


def run_rollouts(bank: Bank, generators: dict[str, Any], prompts: list[Prompt], S: int, *,
                 progress: bool = False) -> dict[str, dict[str, Any]]:
    """Every generator on the same prompts; ``generators`` maps a row name to a Decoder or None (truth)."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(prompts) * len(generators), desc="eval generate", unit="rollout")
    rows = {}
    for name, dec in generators.items():
        rows[name] = summarise(run_generator(bank, dec, prompts, S, bar.update if bar is not None else None))
    if bar is not None:
        bar.close()
    return rows


def _pct(x: float) -> str:
    return "   -  " if x is None or not np.isfinite(x) else f"{100 * x:5.1f}"


def format_rollouts(rep: dict[str, Any]) -> str:
    rows = rep["rows"]
    lines = [f"generation rollouts: {rep['bank']} split={rep['split']} articles={rep['n_articles']} "
             f"prompt={rep['P']} chunks ({rep['prompts']}) steps={rep['S']} lvm={rep['lvm']} "
             f"retriever={rep['retriever']}",
             f"hit rules: {rep['hit_rules']}; 95 % CI over articles in brackets"]
    w = max(26, *(len(n) + 1 for n in rows))
    head = (f"{'generator':<{w}}{'coverage':>18}{'hit':>7}{'fwd':>7}{'repeat':>7}{'echo':>7}{'cos':>7}"
            f"{'collapse':>9}  {'SNAP/BLEND/NOVEL %':<19}{'p50/p95 ms':>12}")
    lines += [head, "-" * len(head)]
    for name, r in rows.items():
        lo, hi = r["coverage_ci"]
        cov = f"{_pct(r['coverage'])} ({_pct(lo).strip()}-{_pct(hi).strip()})"
        d = r["decisions"]
        mix = "truth" if TRUTH in d else "/".join(f"{100 * d.get(k, 0):.0f}" for k in KINDS)
        lat = "-" if not r["latency_ms"] else f"{r['latency_ms']['p50']:.1f}/{r['latency_ms']['p95']:.1f}"
        col = "   -  " if not np.isfinite(r["collapse"]) else f"{r['collapse']:.3f}"
        lines.append(f"{name:<{w}}{cov:>18}{_pct(r['hit']):>7}{_pct(r['forward']):>7}{_pct(r['repeat']):>7}"
                     f"{_pct(r['echo']):>7}{r['cos']:>7.3f}{col:>9}  {mix:<19}{lat:>12}")
    S = rep["S"]
    lines += ["", "cosine of the emitted vector to the true chunk, by step:",
              f"{'generator':<{w}}" + "".join(f"{t + 1:>7}" for t in range(S))]
    for name, r in rows.items():
        lines.append(f"{name:<{w}}" + "".join(f"{c:>7.3f}" for c in r["cos_by_step"]))
    lines += ["", "hit (% of rollouts whose step t shows the true chunk t), by step:"]
    for name, r in rows.items():
        lines.append(f"{name:<{w}}" + "".join(f"{100 * h:>7.1f}" for h in r["hit_by_step"]))
    return "\n".join(lines)
