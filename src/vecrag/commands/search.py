"""`vecrag search BANK "text" -k 10`: nearest bank chunks to a text (or to a chunk with --id)."""

from __future__ import annotations

import argparse
import json

from vecrag.commands.sizes import clamp_count
from vecrag.errors import VecragError

COMMAND = ("search",)
HELP = "search the bank with a text (encoded with the bank's encoder) or with a chunk's own vector (--id)"
DESCRIPTION = """\
Encode TEXT with the bank's encoder and print the k nearest chunks: rank, chunk id, cosine score, article
title and chunk text (truncated; --width). --id N searches with chunk N's stored vector instead (it finds
itself first). Uses the saved index (`vecrag index BANK`), or exact search when none is saved.

Example: vecrag search banks/wiki-500 "the french revolution" -k 5
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bank", metavar="BANK", help="bank directory")
    p.add_argument("text", nargs="?", default=None, metavar="TEXT", help="query text")
    p.add_argument("-k", type=int, default=10, help="number of results (more than the bank holds: all of it)")
    p.add_argument("--id", type=int, default=None, help="search with this chunk's own vector instead of a text")
    p.add_argument("--json", action="store_true", help="print JSON (one object with a results list)")
    p.add_argument("--backend", default="auto", choices=["auto", "faiss", "torch"],
                   help="auto: saved FAISS index if any, else exact torch search")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--width", type=int, default=100, help="characters of chunk text to show")


def search_bank(bank, query, k: int, *, backend: str = "auto", device: str = "auto") -> list[dict]:  # noqa: ANN001
    """Results for one query vector: dicts with rank (1-based), id, score, article_id, title, position, text
    (:func:`vecrag.index.query.search`, the library's search, as dicts)."""
    from dataclasses import asdict

    from vecrag.index.query import search

    hits = search(bank, query, k, backend=backend, device=device)[0]
    return [{"rank": r + 1, **asdict(h)} for r, h in enumerate(hits)]


def run(args: argparse.Namespace) -> int:
    from vecrag.bank.store import Bank
    from vecrag.runtime import set_threads

    if args.k <= 0:
        raise VecragError(f"-k must be positive, got {args.k}", hint="-k 10")
    if (args.id is None) == (args.text is None):
        raise VecragError("give either a query TEXT or --id N (not both)", hint='vecrag search BANK "some text"')
    if args.text is not None and not args.text.strip():
        raise VecragError("the query text is empty (an empty text has no meaning to search for)",
                          hint='vecrag search BANK "some text", or --id N to search with a chunk')
    set_threads()
    bank = Bank.open(args.bank)
    args.k = clamp_count("-k", args.k, bank, what="showing all", default=10)
    if args.id is not None:
        if not 0 <= args.id < bank.n:
            raise VecragError(f"chunk id {args.id} is outside the bank (0..{bank.n - 1})", path=bank.path)
        query = bank.vectors_f32([args.id])[0]
        label = f"chunk {args.id}: {bank.texts[args.id]}"
    else:
        from vecrag.bank.encode import load_encoder

        enc = load_encoder(bank.encoder["name"], device=args.device)
        if enc.dim != bank.dim:
            raise VecragError(f"encoder {bank.encoder['name']} gives {enc.dim}-D vectors, the bank is {bank.dim}-D",
                              path=bank.path / "manifest.json", hint="rebuild the bank or fix its encoder name")
        query = enc.encode([args.text])[0]
        label = args.text
    results = search_bank(bank, query, args.k, backend=args.backend, device=args.device)
    if args.json:
        print(json.dumps({"bank": str(bank.path), "query": label, "k": args.k, "results": results}, indent=2))
        return 0
    w = max(10, args.width)
    print(f"query: {label[:w]}")
    for r in results:
        text = r["text"].replace("\n", " ")
        text = text if len(text) <= w else text[: w - 3] + "..."
        print(f"{r['rank']:>3}  {r['id']:>9}  {r['score']:.4f}  [{r['title'][:40]}]  {text}")
    return 0
