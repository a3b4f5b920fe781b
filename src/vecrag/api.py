"""vecrag as a library: typed search hits, trained models as objects, and the generator `vecrag generate` uses.

    import vecrag

    bank = vecrag.Bank.open("banks/wiki-300")             # or vecrag.Bank.build("part-01.jsonl.xz", "banks/x")
    hits = bank.search("the history of the Roman Empire", k=5)[0]      # list[Hit], best first
    lvm = vecrag.LVM.load("runs/lvm", bank=bank)
    tower = vecrag.Retriever.load("runs/retriever", bank=bank)
    v_hat = lvm.predict([12, 13, 14])                     # bank ids or context vectors -> next-chunk vector
    gen = vecrag.Generator(bank, lvm="runs/lvm", retriever="runs/retriever")   # calibrated neutral profile
    for step in gen.generate("Alabama is a state in the southeastern United States.", steps=5):
        print(step.decision.kind, step.text)

Each object wraps the same code the CLI runs (the predictors, the decoder, the calibration), so a result in a
notebook is the result of the command.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vecrag.errors import VecragError


@dataclass(frozen=True)
class Hit:
    """One search result: the chunk's id (its row in the bank), cosine score, article and text."""

    id: int
    score: float
    article_id: int
    title: str
    position: int
    text: str


def _title_lookup(bank: Any) -> dict[int, str]:
    arts = bank.articles
    return dict(zip(arts.column("article_id").to_pylist(), arts.column("title").to_pylist(), strict=True))


def search(bank: Any, query: str | Sequence[str] | np.ndarray, k: int = 10, *, device: str = "cpu",
           backend: str = "auto") -> list[list[Hit]]:
    """Top-``k`` chunks for each query: a text, a list of texts (embedded with the bank's encoder), or unit
    vectors [n, D] / [D]. One list of hits per query, best first (``Bank.search`` calls this)."""
    from vecrag.index import open_index

    if isinstance(query, str) or (isinstance(query, Sequence) and query and isinstance(query[0], str)):
        texts = [query] if isinstance(query, str) else list(query)
        if any(not t.strip() for t in texts):
            raise VecragError("a query text is empty (an empty text has no meaning to search for)")
        from vecrag.encode import load_encoder

        enc = load_encoder(bank.encoder["name"], device=device)
        bank.check_encoder(enc.info.name, enc.info.dim)
        q = enc.encode(texts)
    else:
        q = np.asarray(query, np.float32)
        q = q[None] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != bank.dim:
            raise VecragError(f"query vectors must be [n, {bank.dim}] (this bank's dimension), got {q.shape}")
        if not np.isfinite(q).all():
            raise VecragError("query vectors contain NaN or Inf")
    if not 1 <= k:
        raise VecragError(f"k must be >= 1, got {k}")
    k = min(int(k), bank.n)
    scores, ids = open_index(bank, backend=backend, device=device).search(np.ascontiguousarray(q, np.float32), k)
    titles = _title_lookup(bank)
    out = []
    for srow, irow in zip(scores.tolist(), ids.tolist(), strict=True):
        hits = []
        for s, i in zip(srow, irow, strict=True):
            if i < 0:
                break
            a = int(bank.article_of[i])
            hits.append(Hit(int(i), float(s), a, titles.get(a, ""), int(bank.position_of[i]), bank.texts[i]))
        out.append(hits)
    return out


def _context(bank: Any, context: Any, dim: int, L: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, L, D] right-aligned context and its mask from bank ids (a list of ints, or a list of such lists) or
    vectors ([L', D] or [n, L', D])."""
    from vecrag.decode.generate import window

    arr = np.asarray(context)
    if arr.dtype.kind in "iu":
        if bank is None:
            raise VecragError("a context of bank ids needs the bank: load with bank=...")
        rows = arr[None] if arr.ndim == 1 else arr
        if rows.size and (rows.min() < 0 or rows.max() >= bank.n):
            raise VecragError(f"context ids must be in 0..{bank.n - 1}")
        vecs = [bank.vectors_f32(r) for r in rows]
    else:
        a = np.asarray(context, np.float32)
        vecs = [a] if a.ndim == 2 else list(a)
        if not vecs or vecs[0].ndim != 2 or vecs[0].shape[1] != dim:
            raise VecragError(f"context vectors must be [L, {dim}] or [n, L, {dim}], got {a.shape}")
    ctx, mask = zip(*(window(list(v), L, dim) for v in vecs), strict=True)
    return np.concatenate(ctx), np.concatenate(mask)


class _Model:
    """A trained run (or a heuristic) as a context -> unit vector function."""

    role = ""

    def __init__(self, predictor: Any, bank: Any = None):
        self.predictor, self.bank = predictor, bank

    @classmethod
    def load(cls, run: str | Path, *, bank: Any = None, device: str = "cpu") -> Any:
        """A run directory from `vecrag train`, or ``heuristic:ewma`` / ``heuristic:last``; ``bank`` (optional)
        is checked against the run's encoder and enables contexts given as bank ids."""
        from vecrag.decode.predictors import parse_predictor

        return cls(parse_predictor(str(run), cls.role, device=device, bank=bank), bank)

    @property
    def name(self) -> str:
        return str(self.predictor.name)

    @property
    def context_len(self) -> int:
        return int(self.predictor.context_len)

    def _run(self, context: Any) -> np.ndarray:
        dim = self.bank.dim if self.bank is not None else np.asarray(context).shape[-1]
        ctx, mask = _context(self.bank, context, dim, self.context_len)
        out = np.asarray(self.predictor(ctx, mask), np.float32)
        single = np.asarray(context).ndim == (1 if np.asarray(context).dtype.kind in "iu" else 2)
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, context_len={self.context_len})"


class LVM(_Model):
    """The next-chunk-vector model of a `vecrag train lvm` run: ``predict(context)`` -> unit vector(s)."""

    role = "lvm"

    def predict(self, context: Any) -> np.ndarray:
        """Context as bank ids ([L] or [n, L]) or vectors ([L, D] or [n, L, D]) -> predicted next vector(s)."""
        return self._run(context)


class Retriever(_Model):
    """The query tower of a `vecrag train retriever` run: ``query(context)`` -> unit query vector(s)."""

    role = "retriever"

    def query(self, context: Any) -> np.ndarray:
        """Context as bank ids ([L] or [n, L]) or vectors ([L, D] or [n, L, D]) -> query vector(s) to search."""
        return self._run(context)


class Generator:
    """Vector-native generation over a bank, exactly as `vecrag generate` runs it: LVM + tower -> cascade ->
    SNAP / BLEND / NOVEL, no repeats and no prompt echo; a calibrated profile reads the calibration
    `vecrag calibrate` wrote for this LVM and retriever (it refuses without one; ``greedy`` and ``gtr-t5``
    need none). ``close()`` (or a ``with`` block) stops its search thread."""

    def __init__(self, bank: Any, *, lvm: str | Path = "heuristic:ewma", retriever: str | Path = "heuristic:last",
                 profile: str = "neutral", device: str = "cpu", lane: str | None = None,
                 timeout_ms: float | None = 50.0, calibration: str | Path | None = None, inverter: Any = None,
                 keep_context_ids: bool = False, allow_repeats: bool = False, never_back: bool = False,
                 **cascade: Any):
        """``cascade``: explicit overrides of K, k, w_tower, w_lvm, lane_lambda, w_topic, feedback (as the CLI's
        flags; by default the calibration's choices). The other options mirror `vecrag generate`'s flags."""
        import argparse

        bad = sorted(set(cascade) - {"K", "k", "w_lvm", "lane_lambda", "w_topic", "feedback", "w_tower"})
        if bad:
            raise VecragError(f"unknown Generator option(s): {', '.join(bad)}",
                              hint="K, k, w_tower, w_lvm, lane_lambda, w_topic, feedback")
        args = argparse.Namespace(lvm=str(lvm), retriever=str(retriever), context_len=None, backend="auto",
                                  nprobe=None, device=device, threads=None, profile=profile, profiles=None,
                                  calibration=str(calibration) if calibration else None, K=cascade.get("K"),
                                  k=cascade.get("k", 10), w_tower=cascade.get("w_tower", 1.0),
                                  w_lvm=cascade.get("w_lvm"), lane_lambda=cascade.get("lane_lambda"),
                                  w_topic=cascade.get("w_topic"), feedback=cascade.get("feedback"),
                                  timeout_ms=timeout_ms or 0.0, lane=lane, keep_context_ids=keep_context_ids,
                                  allow_repeats=allow_repeats, never_back=never_back)
        self._build(bank, args, inverter=inverter)

    @classmethod
    def from_args(cls, bank: Any, args: Any, *, profiles: Any = None, inverter: Any = None) -> Generator:
        """The generator of a parsed `vecrag generate` command line (the CLI builds its generator here)."""
        gen = cls.__new__(cls)
        gen._build(bank, args, profiles=profiles, inverter=inverter)
        return gen

    def _build(self, bank: Any, args: Any, *, profiles: Any = None, inverter: Any = None) -> None:
        from vecrag.bank import Bank
        from vecrag.decode import common
        from vecrag.decode.generate import Decoder

        self.bank = bank if isinstance(bank, Bank) else Bank.open(bank)
        self.lvm, self.tower = common.load_predictors(self.bank, args)
        self.setup = common.decoder_setup(self.bank, args, self.lvm, self.tower, profiles=profiles)
        self._args = args
        self._embed: Any = None
        self.decoder = Decoder.for_bank(
            self.bank, common.open_search(self.bank, args), self.lvm, self.tower, self.setup.policies,
            self.setup.cascade, lane=getattr(args, "lane", None), never_back=getattr(args, "never_back", False),
            inverter=inverter, K=args.K, exclude_context=not getattr(args, "keep_context_ids", False),
            no_repeat=not getattr(args, "allow_repeats", False), feedback=self.setup.feedback)

    def prompt(self, prompt: str | Sequence[int]) -> tuple[list[np.ndarray], list[int] | None, list[str]]:
        """(vectors, bank ids or None, chunk texts) of a prompt: a text (chunked and embedded with the bank's
        chunker and encoder) or a list of bank chunk ids."""
        from vecrag.decode import common

        if isinstance(prompt, str):
            if self._embed is None:
                self._embed = common.prompt_embedder(self.bank, self._args.device)
            chunks, vecs = self._embed(prompt)
            return list(vecs), None, chunks
        ids = [int(i) for i in prompt]
        if not ids or min(ids) < 0 or max(ids) >= self.bank.n:
            raise VecragError(f"prompt ids must be a non-empty list in 0..{self.bank.n - 1}")
        return list(self.bank.vectors_f32(np.asarray(ids))), ids, [self.bank.texts[i] for i in ids]

    def generate(self, prompt: str | Sequence[int], steps: int = 5) -> Iterator[Any]:
        """Yield ``steps`` :class:`vecrag.decode.generate.Step` records (``decision.kind``, ``decision.c``,
        ``text_id``, ``text``, ``approx``; ``as_dict()`` is the CLI's JSON)."""
        if not 1 <= int(steps) <= 10_000:
            raise VecragError(f"steps must be in 1..10000, got {steps}")
        vecs, ids, texts = self.prompt(prompt)
        yield from self.decoder.generate(vecs, int(steps), ids, texts)

    def continuation(self, prompt: str | Sequence[int], steps: int = 5) -> str:
        """The generated steps as one readable passage (BLEND / NOVEL text marked ``[~ ...]``)."""
        from vecrag.decode.generate import continuation

        return continuation([s.as_dict() for s in self.generate(prompt, steps)])

    def close(self) -> None:
        self.decoder.close()

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _train(kind: str, bank: Any, out: str | Path | None, resume: str | Path | None, config: str | Path | None,
           overrides: dict[str, Any] | None, allow_config_change: bool, quiet: bool) -> dict[str, Any]:
    from vecrag.cli import build_parser

    argv = ["train", kind]
    if bank is not None and resume is None:
        argv.append(str(getattr(bank, "path", bank)))
    if out is not None:
        argv += ["--out", str(out)]
    if resume is not None:
        argv += ["--resume", str(resume)]
    if config is not None and resume is None:
        argv += ["--config", str(config)]
    if allow_config_change:
        argv.append("--allow-config-change")
    if quiet:
        argv.append("--quiet")
    argv += [f"{k}={v}" for k, v in (overrides or {}).items()]
    args = build_parser().parse_args(argv)
    mod = __import__(f"vecrag.commands.train_{kind}", fromlist=["train"])
    return mod.train(args) or {}


def train_retriever(bank: Any = None, *, out: str | Path | None = None, resume: str | Path | None = None,
                    config: str | Path | None = "retriever-default", overrides: dict[str, Any] | None = None,
                    allow_config_change: bool = False, quiet: bool = True) -> dict[str, Any]:
    """Train a two-tower retriever into the run directory ``out`` (or continue ``resume``), exactly as
    `vecrag train retriever` does (same loop, run directory, lock and resume checks); ``overrides`` are the
    command's KEY=VALUE pairs, e.g. ``{"train.epochs": 3, "model.anchor": "ewma"}``. Returns the run's summary
    (best metric, epoch, steps); `vecrag.Retriever.load(out)` loads the result."""
    return _train("retriever", bank, out, resume, config, overrides, allow_config_change, quiet)


def train_lvm(bank: Any = None, *, out: str | Path | None = None, resume: str | Path | None = None,
              config: str | Path | None = "lvm-default", overrides: dict[str, Any] | None = None,
              allow_config_change: bool = False, quiet: bool = True) -> dict[str, Any]:
    """Train an LVM as `vecrag train lvm` does (see :func:`train_retriever`); `vecrag.LVM.load(out)` loads it."""
    return _train("lvm", bank, out, resume, config, overrides, allow_config_change, quiet)


EVALUATIONS = {"baselines": ("eval", "baselines"), "lvm": ("eval", "lvm"), "retriever": ("eval", "retriever"),
               "cascade": ("eval", "cascade"), "decode": ("eval", "decode"), "generate": ("eval", "generate"),
               "calibrate": ("calibrate",)}


def evaluate(kind: str, target: Any, **options: Any) -> dict[str, Any]:
    """Run an evaluation as its command does and return the report it prints (with ``written``: the files it
    wrote). ``kind``: baselines | lvm | retriever | cascade | decode | generate | calibrate; ``target``: the bank
    (a Bank or its path; for ``lvm`` / ``retriever`` the run directory). ``options`` are the command's flags in
    Python form: ``split="test"``, ``lvm="runs/lvm"``, ``max_articles=50``, ``quiet=True``, ``profile=["neutral",
    "creative"]`` for a repeatable flag, ``ks=[1, 10]`` for a list of numbers. See ``vecrag eval KIND --help``."""
    from vecrag.cli import build_parser

    if kind not in EVALUATIONS:
        raise VecragError(f"unknown evaluation {kind!r}", hint=f"one of {', '.join(EVALUATIONS)}")
    argv = [*EVALUATIONS[kind], str(getattr(target, "path", target))]
    options.setdefault("quiet", True)
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list | tuple) and key in ("profile", "profiles_list"):
            for v in value:
                argv += ["--profile", str(v)]
        elif isinstance(value, list | tuple):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse reports the bad option on stderr
        raise VecragError(f"bad options for vecrag {' '.join(EVALUATIONS[kind])}: {' '.join(argv[2:])}",
                          hint=f"see `vecrag {' '.join(EVALUATIONS[kind])} --help`") from e
    module = __import__(f"vecrag.commands.{'_'.join(EVALUATIONS[kind])}", fromlist=["evaluate"])
    return module.evaluate(args)
