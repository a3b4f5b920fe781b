"""vecrag.eval.baselines: heuristics vs the full bank with the shared hit rules; BM25 and encoder-on-text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_synthetic_bank
from vecrag.bank.sequences import Samples, make_samples
from vecrag.bank.store import Bank, EncoderInfo, write_bank
from vecrag.cli import main
from vecrag.eval.baselines import BM25Search, context_texts, run_baselines
from vecrag.index.build import build_index
from vecrag.index.search import ExactTorchIndex
from vecrag.scoring.ranks import retrieve_ranks

ARTICLES = {
    "Photosynthesis": [
        "Photosynthesis converts light energy into chemical energy in plants.",
        "Chlorophyll absorbs mostly blue and red light.",
        "The light reactions take place in the thylakoid membranes.",
        "Carbon dioxide is fixed by the Calvin cycle in the stroma.",
        "Oxygen is released as a by-product of splitting water.",
        "Most life on Earth depends on the sugars made this way.",
    ],
    "Roman Empire": [
        "Augustus became the first Roman emperor in 27 BC.",
        "The empire reached its greatest extent under Trajan.",
        "Roman roads connected distant provinces to the capital.",
        "Latin spread across the western provinces of the empire.",
        "The western empire collapsed in the fifth century.",
        "The eastern empire survived as Byzantium until 1453.",
    ],
    "Volcano": [
        "A volcano is a rupture in the crust of a planet.",
        "Magma rises from the mantle through the crust.",
        "Lava flows can travel many kilometres before cooling.",
        "Explosive eruptions throw ash high into the atmosphere.",
        "Volcanic ash can ground aircraft for days.",
        "Many volcanoes lie along the Pacific Ring of Fire.",
    ],
    "Chess": [
        "Chess is a board game for two players.",
        "Each player begins with sixteen pieces.",
        "The queen is the most powerful piece on the board.",
        "Checkmate ends the game when the king cannot escape.",
        "Opening theory has been studied for centuries.",
        "Computers surpassed the best human players in 1997.",
    ],
    "Jazz": [
        "Jazz originated in New Orleans in the early twentieth century.",
        "Improvisation is central to jazz performance.",
        "Swing became the popular dance music of the 1930s.",
        "Bebop introduced fast tempos and complex harmonies.",
        "Miles Davis recorded Kind of Blue in 1959.",
        "Jazz influenced many later genres of popular music.",
    ],
    "Honey bee": [
        "Honey bees live in colonies with a single queen.",
        "Worker bees collect nectar and pollen from flowers.",
        "Bees communicate the location of food with a waggle dance.",
        "Nectar is turned into honey and stored in wax cells.",
        "Bees pollinate many crops grown by farmers.",
        "Colony collapse has worried beekeepers in recent years.",
    ],
}


def _text_bank(path: Path, vectors: np.ndarray | None = None, encoder: EncoderInfo | None = None) -> Bank:
    texts = [s for sents in ARTICLES.values() for s in sents]
    arts = np.repeat(np.arange(len(ARTICLES)), 6)
    pos = np.tile(np.arange(6), len(ARTICLES))
    if vectors is None:
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((len(texts), 16)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        encoder = EncoderInfo("random-unit-vectors", 16)
    bank = write_bank(path, vectors, article_ids=arts, positions=pos, texts=texts, titles=list(ARTICLES),
                      encoder=encoder, dtype="float32")
    return bank


def _all_article_samples(bank: Bank) -> Samples:
    """Every target with >= 1 context chunk, whatever its split (the text bank is too small to split)."""
    start = bank.article_start
    keep = np.arange(bank.n) > start
    return Samples(np.flatnonzero(keep).astype(np.int64), start[keep], "all")


@pytest.fixture(scope="module")
def walk_bank(tmp_path_factory: pytest.TempPathFactory) -> Bank:
    return make_synthetic_bank(tmp_path_factory.mktemp("bl") / "bank", n_articles=300, per_article=12, dim=32)


def test_heuristics_beat_random_and_oracle_is_perfect(walk_bank: Bank) -> None:
    samples = make_samples(walk_bank, "test")
    assert len(samples) >= 100
    rows = run_baselines(walk_bank, samples, 10, (1, 10, 100), index=ExactTorchIndex(walk_bank.vectors),
                         text_baselines=False, progress=False)
    assert rows["oracle"]["R@1"] == 1.0
    random_r10 = 10 / walk_bank.n  # a random query's chance of the target in the top 10
    for m in ("last", "ewma-0.1", "ewma-0.05", "ewma-0.5", "mean"):
        assert rows[m]["n_queries"] == len(samples)
        assert rows[m]["R@10"] > 50 * random_r10, (m, rows[m]["R@10"])
        assert rows[m]["R@1"] <= rows[m]["R@10"] <= rows[m]["R@100"]
    assert rows["last"]["R@10"] > 0.3 and rows["ewma-0.1"]["R@10"] > 0.3


def test_context_exclusion_and_text_hits_on_a_hand_built_case(tmp_path: Path) -> None:
    e = np.eye(8, dtype=np.float32)

    def unit(v: np.ndarray) -> np.ndarray:
        return (v / np.linalg.norm(v)).astype(np.float32)

    c0, c1, tgt = e[0], unit(e[0] + 0.1 * e[1]), unit(e[0] + 0.3 * e[1])
    dup = unit(e[0] + 0.12 * e[1])  # another article's chunk with the target's text, closer to the query
    vecs = np.stack([c0, c1, tgt, e[4], dup, e[5]])
    texts = ["zero", "one", "target text", "four", "target text", "five"]
    bank = write_bank(tmp_path / "hand", vecs, article_ids=np.array([0, 0, 0, 1, 1, 1]),
                      positions=np.array([0, 1, 2, 0, 1, 2]), texts=texts, titles=["A", "B"],
                      encoder=EncoderInfo("hand", 8), dtype="float32")
    samples = Samples(np.array([2]), np.array([0]), "hand")
    index = build_index(bank, "flat", progress=False)
    q = vecs[[1]]  # the `last` heuristic: chunk 1; ranking is c1, dup, c0, tgt, ...
    assert list(index.search(q, 4)[1][0]) == [1, 4, 0, 2]

    def rank(**kw: bool) -> int:
        return int(retrieve_ranks(index, q, samples, 2, 5, bank=bank, **kw)[0])

    assert rank(include_context=True, text_hits=False) == 3
    assert rank(include_context=False, text_hits=False) == 1  # c1 and c0 removed
    assert rank(include_context=False, text_hits=True) == 0  # the duplicate text counts
    assert rank(include_context=True, text_hits=True) == 1


def test_cli_writes_json_and_table(walk_bank: Bank, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bl.json"
    rc = main(["eval", "baselines", str(walk_bank.path), "--split", "test", "--context", "5", "--ks", "1,10,50",
               "--max-queries", "60", "--no-text-baselines", "--backend", "torch", "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "split test, 60 queries" in text and "context ids excluded" in text and "ewma-0.05" in text
    rep = json.loads(out.read_text())
    assert rep["n_queries"] == 60 and rep["hit_rules"] == {"exclude_context": True, "text_hits": True}
    assert set(rep["methods"]) == {"last", "mean", "ewma-0.5", "ewma-0.1", "ewma-0.05", "oracle"}
    assert rep["methods"]["oracle"]["R@1"] == 1.0 and len(rep["methods"]["last"]["R@10_ci"]) == 2
    rc = main(["eval", "baselines", str(walk_bank.path), "--context", "5", "--ks", "1,10", "--max-queries", "40",
               "--no-text-baselines", "--include-context", "--no-text-hits", "--backend", "torch", "--quiet"])
    assert rc == 0
    rep2 = json.loads((walk_bank.path / "eval" / "baselines-test.json").read_text())
    assert rep2["hit_rules"] == {"exclude_context": False, "text_hits": False}
    # with the context kept, the oracle still finds itself, but `last` now finds its own context chunk first
    assert rep2["methods"]["oracle"]["R@1"] == 1.0 and rep2["methods"]["last"]["R@1"] == 0.0


def test_bm25_on_real_sentences_and_cache(tmp_path: Path) -> None:
    bank = _text_bank(tmp_path / "text")
    bm = BM25Search(bank)
    ids = bm.search(["Magma rises from the mantle through the crust.", "zzqx unknownword"], 3)
    assert ids[0, 0] == bank.texts.index("Magma rises from the mantle through the crust.")
    assert (ids[1] == -1).all()  # no shared term: nothing retrieved (score 0 is not a result)
    assert (bank.path / "bm25" / "vecrag-key.json").exists()
    again = BM25Search(bank)  # loaded from the cache
    assert np.array_equal(again.search(["queen bees and honey"], 5), bm.search(["queen bees and honey"], 5))
    samples = _all_article_samples(bank)
    assert context_texts(bank, samples.subset(slice(2, 3)), 2) == [" ".join(list(ARTICLES.values())[0][1:3])]
    rows = run_baselines(bank, samples, 3, (1, 5, 10), index=ExactTorchIndex(bank.vectors), progress=False,
                         bm25_last=2)
    bm25 = rows["bm25-last2"]
    assert bm25["n_queries"] == len(samples) == 30 and bm25["R@1"] <= bm25["R@10"]
    # 6 topical articles: the previous sentences share words with the next often enough to beat chance
    assert bm25["R@10"] > 10 / bank.n
    assert "skipped" in rows["encoder-text-last2"]  # random vectors: no encoder to load


def test_encoder_text_baseline_and_search_with_the_real_encoder(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    encode = pytest.importorskip("vecrag.bank.encode")
    try:
        enc = encode.load_encoder(None, device="cpu")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"default encoder unavailable: {e}")
    texts = [s for sents in ARTICLES.values() for s in sents]
    bank = _text_bank(tmp_path / "real", enc.encode(texts), enc.info)
    rows = run_baselines(bank, _all_article_samples(bank), 3, (1, 10), index=ExactTorchIndex(bank.vectors),
                         encoder=enc, progress=False)
    et = rows["encoder-text-last3"]
    assert "skipped" not in et and et["R@10"] > 0.3  # same-article sentences are near in a 36-chunk bank
    assert rows["last"]["R@10"] > 0.3
    rc = main(["search", str(bank.path), "the eruption threw ash into the sky", "-k", "3", "--json",
               "--backend", "torch", "--device", "cpu"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)["results"]
    assert res[0]["title"] == "Volcano" and len(res) == 3
