"""Does a re-ranker over the context's similarity profile fix the tower's ordering misses? (a probe, not a test)

Half of a tower's misses rank an earlier chunk of the target's own article first (docs/results.md). A candidate's
cosine to each of the L context positions might tell "next" from "earlier" where one query vector cannot. This
takes a trained retriever run's top ``--k`` (context excluded), gives each candidate the tower score plus those L
cosines (and the context mask), trains a small MLP on top of the tower's logits listwise (softmax over the
candidates, any chunk with the target's text is a positive) on ``--train`` train queries, and prints R@1 / R@10 /
R@k on val and test before and after re-ranking::

    .venv/bin/python benchmarks/rerank_probe.py demo_out/runs/retriever --k 100 --train 20000 [--vectors]

``--vectors`` also feeds each candidate's vector and its products with the query and the last context vector: a
score that need not be linear in the candidate (the tower's q . c is), e.g. one that learns what a lead reads like.
"""

from __future__ import annotations

import argparse

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vecrag.bank.sequences import gather_context, make_samples  # noqa: E402
from vecrag.bank.store import Bank  # noqa: E402
from vecrag.eval.retriever_eval import tower_queries  # noqa: E402
from vecrag.index.load import open_index  # noqa: E402
from vecrag.runs.load import load_retriever  # noqa: E402


def candidates(bank, model, L, split, k, max_samples, min_context):
    """Features [n, k, 1 + 2L] (tower score, cosine to each context position, context mask), hits [n, k], and for
    ``--vectors`` the candidate ids [n, k], the queries [n, D] and the last context vectors [n, D]."""
    s = make_samples(bank, split, min_context=min_context, max_samples=max_samples, seed=0)
    q = tower_queries(model, bank, s, L)
    _, ids = open_index(bank, backend="torch").search(q, k + L)
    ctx = s.context_ids(L)
    keep = ~((ids[:, :, None] == ctx[:, None, :]) & (ctx[:, None, :] >= 0)).any(2)
    top = np.full((len(s), k), -1, np.int64)
    for i in range(len(s)):
        row = ids[i][keep[i]][:k]
        top[i, :len(row)] = row
    vecs = bank.vectors_f32(top.clip(0).reshape(-1)).reshape(len(s), k, -1)
    cv, cm = gather_context(bank.vectors, ctx)
    score = np.einsum("nd,nkd->nk", q, vecs)
    prof = np.einsum("nld,nkd->nkl", cv.astype(np.float32), vecs) * cm[:, None, :]
    mask = np.broadcast_to(cm[:, None, :], prof.shape).astype(np.float32)
    tg = bank.text_group
    hit = (tg[top.clip(0)] == tg[s.target][:, None]) & (top >= 0)
    feats = torch.from_numpy(np.concatenate([score[..., None], prof, mask], -1))
    extra = (torch.from_numpy(top.clip(0)), torch.from_numpy(q), torch.from_numpy(cv[:, -1].astype(np.float32)))
    return feats, torch.from_numpy(hit), extra


def with_vectors(f, extra, rows, bank_t):
    """``f`` plus, per candidate c, the vectors c, q * c and last * c (q: the tower's query, last: the newest
    context vector): what a re-ranker needs to learn a score that is not linear in c (e.g. "lead-like" chunks)."""
    top, q, last = (t[rows] for t in extra)
    c = bank_t[top]
    return torch.cat([f, c, q[:, None] * c, last[:, None] * c], -1)


def recall(scores, hit, ks):
    h = torch.gather(hit, 1, torch.sort(scores, dim=1, descending=True, stable=True).indices)
    return [100 * h[:, :k].any(1).float().mean().item() for k in ks]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory of `vecrag train retriever`")
    p.add_argument("--k", type=int, default=100, help="candidates re-ranked per query")
    p.add_argument("--train", type=int, default=20000, help="train queries for the re-ranker")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--tau", type=float, default=0.05, help="temperature of the tower's logits")
    p.add_argument("--vectors", action="store_true",
                   help="also give the re-ranker each candidate's vector and its products with the query and the "
                        "last context vector (3 x D more inputs), not only the similarity profile")
    p.add_argument("--hidden", type=int, default=64, help="the re-ranker's hidden units")
    args = p.parse_args()
    torch.manual_seed(0)
    cfg, model, _ = load_retriever(args.run)
    bank, L = Bank.open(cfg.bank), cfg.train.context
    data = {sp: candidates(bank, model, L, sp, args.k, args.train if sp == "train" else None, cfg.min_context)
            for sp in ("train", "val", "test")}
    x, h, ex = data["train"]
    has = h.any(1)  # queries whose target is among the candidates
    x, h, ex = x[has], h[has], tuple(t[has] for t in ex)
    if args.vectors:  # the bank as float32 rows, only for this mode (1.5 KB a chunk)
        bank_t = torch.from_numpy(bank.vectors_f32())
        inputs = lambda f, e, rows: with_vectors(f, e, rows, bank_t)  # noqa: E731
    else:
        inputs = lambda f, e, rows: f  # noqa: E731
    n_in = inputs(x[:1], ex, torch.arange(1)).shape[-1]
    net = torch.nn.Sequential(torch.nn.Linear(n_in, args.hidden), torch.nn.GELU(), torch.nn.Linear(args.hidden, 1))
    torch.nn.init.zeros_(net[2].weight)  # starts as the tower's own ranking
    torch.nn.init.zeros_(net[2].bias)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-2)
    logits = lambda f: f[..., 0] / args.tau + net(f).squeeze(-1)  # noqa: E731
    for _ in range(args.epochs):
        for b in torch.randperm(len(x)).split(256):
            z = logits(inputs(x[b], ex, b))
            loss = (torch.logsumexp(z, 1) - torch.logsumexp(z.masked_fill(~h[b], -1e9), 1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    ks = (1, 10, args.k)
    print(f"re-ranking the tower's top {args.k} of {args.run} ({len(x)} train queries, {args.epochs} epochs, "
          f"inputs: similarity profile{' + candidate vectors' if args.vectors else ''}, {n_in} a candidate)")
    print(f"{'split':>6} {'ranking':>10} " + " ".join(f"{'R@' + str(k):>7}" for k in ks))
    with torch.no_grad():
        for sp in ("val", "test"):
            f, hit, e = data[sp]
            z = torch.cat([logits(inputs(f[b], e, b)) for b in torch.arange(len(f)).split(256)])
            for name, sc in (("tower", f[..., 0]), ("reranked", z)):
                print(f"{sp:>6} {name:>10} " + " ".join(f"{r:>7.2f}" for r in recall(sc, hit, ks)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
