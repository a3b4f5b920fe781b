"""Lanes: a coarse domain label per article (and so per chunk).

Three sources, named by a *lane spec* string:

- ``metadata``: the corpus's own label (``Article.lane``), kept as read. The default at ingest.
- ``PATH.yaml`` or ``default`` (the shipped ``presets/lanes.yaml``): lane name -> description (a string or a
  list of strings). Each description is embedded with the bank's encoder; a lane's prototype is the
  normalised mean of its description vectors; each article goes to the prototype with the highest cosine to
  its mean chunk vector (normalised).
- ``kmeans:K``: spherical FAISS k-means on the article mean vectors; lanes are named ``cluster-00`` ..
  (``cluster-00`` the largest); the manifest records each cluster's size, frequent title words and the
  titles nearest its centroid.
- ``none``: no lanes.

All chunks of an article share its lane.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vecrag.errors import VecragError

log = logging.getLogger(__name__)
PRESET = Path(__file__).resolve().parents[1] / "presets" / "lanes.yaml"
# BANK/lane_prototypes.json: the lane descriptions embedded once with the bank's encoder, for the context lane
# classifier of every decoding command (loading the encoder to embed a dozen descriptions took ~5 s a command)
PROTOTYPES = "lane_prototypes.json"
KMEANS_SEED = 1234
_STOP = set("""a an and the of in on at to for from by with as or is are was were be de la le les du des el
s its it this that these those into over under about after before between during new""".split())


@dataclass(frozen=True)
class LaneSpec:
    kind: str  # "metadata" | "prototypes" | "kmeans" | "none"
    path: Path | None = None
    k: int = 0

    def describe(self) -> str:
        if self.kind == "prototypes":
            return str(self.path)
        if self.kind == "kmeans":
            return f"kmeans:{self.k}"
        return self.kind

    @property
    def needs_vectors(self) -> bool:
        return self.kind in ("prototypes", "kmeans")


@dataclass
class LaneResult:
    article_lanes: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def parse_lane_spec(spec: str | None) -> LaneSpec:
    """``None``/``metadata`` | ``none`` | ``default`` | ``PATH.yaml`` | ``kmeans:K``."""
    if spec is None or spec == "" or spec == "metadata":
        return LaneSpec("metadata")
    if spec == "none":
        return LaneSpec("none")
    if spec in ("default", "preset"):
        return LaneSpec("prototypes", path=PRESET)
    if spec.startswith("kmeans"):
        m = re.fullmatch(r"kmeans:(\d+)", spec)
        if not m or int(m.group(1)) < 2:
            raise VecragError(f"bad lane spec {spec!r}", hint="use kmeans:K with K >= 2, e.g. --lanes kmeans:8")
        return LaneSpec("kmeans", k=int(m.group(1)))
    p = Path(spec).expanduser()
    if not p.exists():
        raise VecragError("lanes file not found", path=p,
                          hint="pass a YAML file (lane name -> description), `default` for the shipped "
                               "presets/lanes.yaml, kmeans:K, metadata or none")
    return LaneSpec("prototypes", path=p.resolve())


def load_lane_descriptions(path: Path) -> dict[str, list[str]]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise VecragError(f"lanes file is not valid YAML ({e})", path=path,
                          hint="write `lane_name: description` lines (see presets/lanes.yaml)") from e
    if isinstance(data, dict) and isinstance(data.get("lanes"), dict):
        data = data["lanes"]
    if not isinstance(data, dict) or len(data) < 2:
        raise VecragError("lanes file must map at least two lane names to descriptions", path=path,
                          hint="e.g.\n    science: physics, chemistry, biology ...\n    history: wars, empires ...")
    out: dict[str, list[str]] = {}
    for name, desc in data.items():
        texts = [desc] if isinstance(desc, str) else desc
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise VecragError(f"lane {name!r} needs a description (a string or a list of strings)", path=path,
                              hint="give each lane one or more sentences describing its articles")
        out[str(name)] = [t.strip() for t in texts]
    return out


def article_means(vectors: np.ndarray, first_chunk: np.ndarray, n_chunks: np.ndarray,
                  block: int = 65536) -> np.ndarray:
    """Normalised mean chunk vector of every article (float32 [A, D]); reads vectors in blocks."""
    n_art = len(first_chunk)
    dim = vectors.shape[1]
    sums = np.zeros((n_art, dim), dtype=np.float64)
    art_of = np.repeat(np.arange(n_art), n_chunks)
    for s in range(0, vectors.shape[0], block):
        v = np.asarray(vectors[s:s + block], dtype=np.float32)
        _accumulate(sums, art_of[s:s + block], v)
    means = sums.astype(np.float32)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return means / np.maximum(norms, 1e-12)


def _accumulate(sums: np.ndarray, rows: np.ndarray, v: np.ndarray) -> None:
    # rows are sorted (chunks of an article are contiguous): reduceat over the run starts
    if len(rows) == 0:
        return
    starts = np.concatenate([[0], np.flatnonzero(np.diff(rows)) + 1])
    sums[rows[starts]] += np.add.reduceat(v.astype(np.float64), starts, axis=0)


def lane_prototypes(descriptions: dict[str, list[str]], names: list[str],
                    embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """One unit row per lane of ``names``: the normalised mean of its embedded descriptions."""
    protos = []
    for name in names:
        v = embed(descriptions[name]).mean(axis=0)
        protos.append(v / max(float(np.linalg.norm(v)), 1e-12))
    return np.asarray(protos, dtype=np.float32)


def assign_prototypes(means: np.ndarray, descriptions: dict[str, list[str]],
                      embed: Callable[[list[str]], np.ndarray]) -> LaneResult:
    names = list(descriptions)
    P = lane_prototypes(descriptions, names, embed)
    if P.shape[1] != means.shape[1]:
        raise VecragError(f"lane prototypes are {P.shape[1]}-D but the bank is {means.shape[1]}-D",
                          hint="embed the lane descriptions with the bank's encoder")
    sims = means @ P.T
    best = sims.argmax(axis=1) if len(means) else np.zeros(0, np.int64)
    lanes = [names[i] for i in best]
    counts = Counter(lanes)
    return LaneResult(lanes, {"lanes": names, "sizes": {n: counts.get(n, 0) for n in names},
                              "mean_best_cosine": round(float(sims.max(axis=1).mean()), 4) if len(means) else 0.0})


def _title_words(titles: list[str], top: int = 5) -> list[str]:
    c: Counter[str] = Counter()
    for t in titles:
        for w in set(re.findall(r"[A-Za-z][A-Za-z'-]+", t.lower())):
            if w not in _STOP and len(w) > 2:
                c[w] += 1
    return [w for w, _ in c.most_common(top)]


def assign_kmeans(means: np.ndarray, k: int, titles: list[str], *, seed: int = KMEANS_SEED,
                  niter: int = 25) -> LaneResult:
    import faiss

    n = len(means)
    if k > n:
        raise VecragError(f"kmeans:{k} asks for more lanes than there are articles ({n})",
                          hint=f"use --lanes kmeans:K with K <= {n}")
    x = np.ascontiguousarray(means, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1_000_000)
    km.train(x)
    sims = x @ km.centroids.T
    raw = sims.argmax(axis=1)
    sizes = np.bincount(raw, minlength=k)
    order = sorted(range(k), key=lambda c: (-sizes[c], c))  # cluster-00 = the largest
    rename = {c: i for i, c in enumerate(order)}
    width = max(2, len(str(k - 1)))
    names = [f"cluster-{i:0{width}d}" for i in range(k)]
    lanes = [names[rename[int(c)]] for c in raw]
    clusters = []
    for c in order:
        members = np.flatnonzero(raw == c)
        near = members[np.argsort(-sims[members, c], kind="stable")[:5]]
        clusters.append({"name": names[rename[c]], "size": int(sizes[c]),
                         "top_title_words": _title_words([titles[i] for i in members]),
                         "nearest_titles": [titles[i] for i in near]})
    return LaneResult(lanes, {"k": k, "seed": seed, "niter": niter, "clusters": clusters})


def assign_lanes(spec: LaneSpec, *, vectors: np.ndarray, first_chunk: np.ndarray, n_chunks: np.ndarray,
                 titles: list[str], metadata_lanes: list[str] | None = None,
                 embed: Callable[[list[str]], np.ndarray] | None = None) -> LaneResult:
    """Per-article lanes for a whole bank; ``meta`` goes into the manifest under ``lanes``."""
    n_art = len(first_chunk)
    if spec.kind == "none":
        return LaneResult([""] * n_art, {"source": "none"})
    if spec.kind == "metadata":
        lanes = list(metadata_lanes) if metadata_lanes is not None else [""] * n_art
        labelled = sum(1 for x in lanes if x)
        return LaneResult(lanes, {"source": "metadata", "labelled_articles": labelled})
    means = article_means(vectors, first_chunk, n_chunks)
    if spec.kind == "kmeans":
        res = assign_kmeans(means, spec.k, titles)
        res.meta = {"source": "kmeans", **res.meta}
        return res
    if embed is None:
        raise VecragError("lane prototypes need the bank's encoder", hint="load the encoder named in the manifest")
    assert spec.path is not None
    res = assign_prototypes(means, load_lane_descriptions(spec.path), embed)
    res.meta = {"source": "prototypes", "file": str(spec.path), **res.meta}
    return res


def relane_bank(bank_path: str | Path, spec_str: str, *, device: str = "auto", encoder: str | None = None) -> Any:
    """Recompute lanes of an existing bank and rewrite its tables (``vecrag bank lanes``)."""
    from vecrag.bank.store import Bank

    bank = Bank.open(bank_path)
    spec = parse_lane_spec(spec_str)
    if spec.kind == "metadata":
        raise VecragError("an existing bank keeps no corpus metadata to re-read lanes from",
                          hint="use --lanes FILE.yaml, default, kmeans:K or none")
    t = bank.articles
    embed = None
    if spec.kind == "prototypes":
        from vecrag.bank.encode import load_encoder

        enc = load_encoder(encoder or bank.encoder["name"], device=device)
        # a local folder given with --encoder stands in for the bank's encoder by name; its dimension must agree
        bank.check_encoder(bank.encoder["name"] if encoder else enc.info.name, enc.info.dim)
        embed = enc.encode
    res = assign_lanes(spec, vectors=bank.vectors, first_chunk=t.column("first_chunk").to_numpy(),
                       n_chunks=t.column("n_chunks").to_numpy(), titles=t.column("title").to_pylist(), embed=embed)
    bank.set_lanes(res.article_lanes, res.meta)
    return bank


def lane_codes_of(lanes: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Integer lane code per chunk (-1 for the empty lane) and the code -> name list (sorted names)."""
    names = sorted({str(x) for x in lanes if x})
    lut = {n: i for i, n in enumerate(names)}
    return np.fromiter((lut.get(str(x), -1) for x in lanes), dtype=np.int64, count=len(lanes)), names


def lane_centroids(vectors: np.ndarray, codes: np.ndarray, use: np.ndarray | None = None,
                   block: int = 1 << 16) -> np.ndarray:
    """Normalised mean vector of each lane code (rows 0..max code) over the chunks where ``use`` is True
    (e.g. the train split only, so that held-out articles do not shape the centroids); a lane with no
    such chunk gets a zero row (never predicted)."""
    n_lanes = int(codes.max()) + 1 if len(codes) and codes.max() >= 0 else 0
    sums = np.zeros((n_lanes, vectors.shape[1]), np.float64)
    for s in range(0, len(codes), block):
        c = codes[s:s + block]
        keep = (c >= 0) if use is None else (c >= 0) & use[s:s + block]
        if keep.any():
            onehot = np.zeros((n_lanes, int(keep.sum())), np.float32)
            onehot[c[keep], np.arange(onehot.shape[1])] = 1.0
            sums += onehot @ np.asarray(vectors[s:s + block][keep], np.float32)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def predict_lanes(ctx: np.ndarray, mask: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Lane code of each context from its own vectors only: the centroid nearest (cosine) to the mean of the
    valid context vectors. -1 for an empty context or a bank without lanes."""
    if len(centroids) == 0:
        return np.full(len(ctx), -1, np.int64)
    m = mask.astype(np.float32)[..., None]
    mean = (ctx * m).sum(1) / np.maximum(m.sum(1), 1.0)
    codes = np.argmax(mean @ centroids.T, axis=1).astype(np.int64)
    return np.where(mask.any(1), codes, -1)


def context_lane_classifier(bank: Any) -> tuple[np.ndarray, str]:
    """Unit vectors, one per lane code (:func:`lane_codes_of` order), to classify a context by its mean vector
    (:func:`predict_lanes`), and what they are. Lanes built from description prototypes get the same
    prototypes (re-embedded with the bank's encoder: the classifier that labelled the articles, applied to the
    context alone); other lanes get centroids of the TRAIN split's chunks (held-out articles never shape them).
    A bank without lanes gets no rows (every context: lane -1)."""
    codes, names = lane_codes_of(bank.lanes)
    if not names:
        return np.zeros((0, bank.dim), np.float32), "none"
    meta = bank.manifest.get("lanes") or {}
    if meta.get("source") == "prototypes":
        path = Path(str(meta.get("file", "")))
        if not path.is_file() and set(names) <= set(load_lane_descriptions(PRESET)):
            path = PRESET  # built elsewhere (e.g. on a GPU machine) with the shipped lanes.yaml
        if path.is_file():
            desc = load_lane_descriptions(path)
            if set(names) <= set(desc):
                key = {"encoder": str(bank.encoder.get("name")), "names": names,
                       "descriptions": {n: desc[n] for n in names}}
                cached = _read_prototypes(bank.path / PROTOTYPES, key)
                if cached is not None:
                    return cached, f"prototypes ({path.name})"
                from vecrag.bank.encode import load_encoder

                try:
                    enc = load_encoder(bank.encoder["name"], device="cpu")
                    protos = lane_prototypes(desc, names, enc.encode)
                except Exception as e:  # noqa: BLE001 -- any failure to embed: the centroids still work
                    log.warning("cannot embed the lane descriptions with %s (%s)", bank.encoder.get("name"), e)
                else:
                    _write_prototypes(bank.path / PROTOTYPES, key, protos)
                    return protos, f"prototypes ({path.name})"
        log.warning("lane prototypes unavailable (%s): classifying contexts by train-split lane centroids", path)
    cent = lane_centroids(bank.vectors, codes, np.isin(bank.article_of, bank.split_articles("train")))
    return cent, "train-split lane centroids"


def _read_prototypes(path: Path, key: dict[str, Any]) -> np.ndarray | None:
    """The cached prototypes when ``path`` holds them for exactly this encoder, these lanes and descriptions."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if {k: data.get(k) for k in key} != key:
            return None
        vecs = np.asarray(data["vectors"], np.float32)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, unreadable or damaged: embed again
    ok = vecs.ndim == 2 and len(vecs) == len(key["names"]) and np.isfinite(vecs).all()
    return vecs if ok else None


def _write_prototypes(path: Path, key: dict[str, Any], vecs: np.ndarray) -> None:
    from vecrag.fsutil import atomic_write_json

    try:
        atomic_write_json(path, {**key, "vectors": np.asarray(vecs, np.float32).tolist()})
    except OSError as e:  # a read-only bank: embed again next time
        log.debug("lane prototypes not cached in %s (%s)", path, e)
