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
from pathlib import Path
from typing import Any

import numpy as np

from vecrag.bank.store import Bank as _StoreBank
from vecrag.errors import VecragError
from vecrag.index.query import Hit as Hit
from vecrag.index.query import search as search


class Bank(_StoreBank):
    """A bank (:class:`vecrag.bank.store.Bank`: ``Bank.open(path)``, vectors, tables, split, lanes) with the
    library's two verbs: :meth:`build` a bank from a corpus and :meth:`search` it."""

    @classmethod
    def build(cls, sources: Any, out: str | Path, *, encoder: Any = None, **options: Any) -> Bank:
        """Ingest ``sources`` (files, folders, globs) into a bank at ``out``, as `vecrag ingest` does; ``options``
        are its keyword arguments (fmt, max_articles, lanes, dtype, split_seed, split_ratios, device, progress,
        overwrite, ...: see :func:`vecrag.bank.ingest.ingest`). Resumable: call it again after an interruption."""
        from vecrag.bank.ingest import ingest

        built = ingest(sources, out, encoder=encoder, **options)
        return cls(built.path, built.manifest, built.vectors)

    def search(self, query: Any, k: int = 10, *, device: str = "cpu", backend: str = "auto") -> list[list[Hit]]:
        """Top-``k`` chunks for a text, a list of texts, or query vectors: one list of :class:`Hit` per query,
        best first (:func:`search`)."""
        return search(self, query, k, device=device, backend=backend)


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
        args = argparse.Namespace(lvm=str(lvm), retriever=str(retriever), context=None, backend="auto",
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
        from vecrag.bank.store import Bank
        from vecrag.commands.common import build_decoder

        self.bank = bank if isinstance(bank, Bank) else Bank.open(bank)
        self.lvm, self.tower, self.setup, self.decoder = build_decoder(self.bank, args, profiles=profiles,
                                                                        inverter=inverter)
        self._args = args
        self._embed: Any = None

    def prompt(self, prompt: str | Sequence[int]) -> tuple[list[np.ndarray], list[int] | None, list[str]]:
        """(vectors, bank ids or None, chunk texts) of a prompt: a text (chunked and embedded with the bank's
        chunker and encoder) or a list of bank chunk ids."""
        from vecrag.decode.prompt import prompt_embedder

        if isinstance(prompt, str):
            if self._embed is None:
                self._embed = prompt_embedder(self.bank, self._args.device)
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
