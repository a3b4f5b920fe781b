"""Lanes: YAML prototypes (the shipped preset and a custom file), kmeans:K, `vecrag bank lanes` rewrites."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.wiki_fixtures import real_encoder, wiki_bank, wiki_jsonl  # noqa: F401
from vecrag.bank.lanes import PRESET, article_means, load_lane_descriptions, parse_lane_spec
from vecrag.bank.store import Bank
from vecrag.cli import main
from vecrag.errors import VecragError


def test_preset_is_valid_and_realistic():
    lanes = load_lane_descriptions(PRESET)
    assert {"science", "history", "geography", "arts", "sports", "legal", "biography", "technology"} <= set(lanes)
    assert parse_lane_spec("default").path == PRESET
    assert parse_lane_spec("kmeans:7").k == 7 and parse_lane_spec(None).kind == "metadata"
    for bad in ("kmeans:1", "kmeans:x", "no/such/lanes.yaml"):
        with pytest.raises(VecragError):
            parse_lane_spec(bad)


def test_article_means_match_numpy(synthetic_bank):
    t = synthetic_bank.articles
    first, cnt = t.column("first_chunk").to_numpy(), t.column("n_chunks").to_numpy()
    got = article_means(synthetic_bank.vectors, first, cnt, block=7)  # blocks cut through articles
    v = synthetic_bank.vectors_f32()
    want = np.stack([v[f:f + c].mean(0) for f, c in zip(first, cnt, strict=True)])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)


def _copy(bank: Bank, dst) -> Bank:
    shutil.copytree(bank.path, dst)
    return Bank.open(dst)


def test_prototype_lanes_put_science_in_science(wiki_bank, real_encoder, tmp_path):  # noqa: F811
    bank = _copy(wiki_bank, tmp_path / "bank")
    assert main(["bank", "lanes", str(bank.path), "--lanes", "default", "--device", "cpu"]) == 0
    bank = Bank.open(bank.path, verify=True)  # checksums updated
    lane = dict(zip(bank.articles.column("title").to_pylist(), bank.articles.column("lane").to_pylist(),
                    strict=True))
    # Anthophyta (flowering plants) and Apiales (an order of flowering plants) are plain biology
    assert lane["Anthophyta"] == "science" and lane["Apiales"] == "science"
    assert lane["Transport in Angola"] != "science" and lane["Aztlan Underground"] == "arts"  # a rock band
    assert bank.manifest["lanes"]["source"] == "prototypes"
    # chunk lanes follow their article
    art_lane = dict(zip(bank.articles.column("article_id").to_pylist(), bank.articles.column("lane").to_pylist(),
                        strict=True))
    assert all(art_lane[int(a)] == ln for a, ln in zip(bank.article_of, bank.lanes, strict=True))
    assert sum(bank.info()["lanes"].values()) == bank.manifest["n_articles"]


def _two_lane_bank(wiki_bank: Bank, tmp_path) -> tuple[Bank, object]:  # noqa: F811
    """A copy of the wiki bank relaned by a custom two-lane YAML file (returned too)."""
    y = tmp_path / "lanes.yaml"
    y.write_text("plants: Botany, flowering plants, leaves, seeds and plant species.\n"
                 "other: Music, films, books, countries, transport and people.\n", encoding="utf-8")
    bank = _copy(wiki_bank, tmp_path / "bank")
    assert main(["bank", "lanes", str(bank.path), "--lanes", str(y), "--device", "cpu"]) == 0
    return Bank.open(bank.path), y


def test_custom_yaml_two_lanes(wiki_bank, tmp_path):  # noqa: F811
    bank, _ = _two_lane_bank(wiki_bank, tmp_path)
    lane = dict(zip(bank.articles.column("title").to_pylist(), bank.articles.column("lane").to_pylist(),
                    strict=True))
    assert lane["Anthophyta"] == "plants" and lane["Actrius"] == "other"


def test_kmeans_yields_k_lanes(wiki_bank, tmp_path, capsys):  # noqa: F811
    bank = _copy(wiki_bank, tmp_path / "bank")
    assert main(["bank", "lanes", str(bank.path), "--lanes", "kmeans:4"]) == 0
    bank = Bank.open(bank.path, verify=True)
    lanes = bank.articles.column("lane").to_pylist()
    assert sorted(set(lanes)) == ["cluster-00", "cluster-01", "cluster-02", "cluster-03"]
    meta = bank.manifest["lanes"]
    sizes = [c["size"] for c in meta["clusters"]]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == bank.manifest["n_articles"]
    assert all(c["nearest_titles"] for c in meta["clusters"])
    assert sorted(set(bank.lanes)) == sorted(set(lanes))
    capsys.readouterr()
    assert main(["bank", "lanes", str(bank.path), "--lanes", "kmeans:99"]) == 2
    assert "kmeans:K with K <= 15" in capsys.readouterr().err


def test_ingest_with_kmeans_lanes(real_encoder, wiki_jsonl, tmp_path):  # noqa: F811
    out = tmp_path / "bank"
    assert main(["ingest", str(wiki_jsonl), "--out", str(out), "--max-articles", "6", "--lanes", "kmeans:3",
                 "--device", "cpu", "--quiet"]) == 0
    bank = Bank.open(out, verify=True)
    assert bank.manifest["n_articles"] == 6 and len(set(bank.articles.column("lane").to_pylist())) == 3
    assert bank.manifest["lanes"]["source"] == "kmeans"


def test_context_lane_classifier_reuses_the_prototypes_that_labelled_the_articles(wiki_bank, real_encoder,  # noqa: F811
                                                                                   tmp_path, monkeypatch):
    from vecrag.bank.lanes import context_lane_classifier, lane_codes_of, predict_lanes

    bank, y = _two_lane_bank(wiki_bank, tmp_path)
    codes, names = lane_codes_of(bank.lanes)
    protos, kind = context_lane_classifier(bank)
    assert kind == "prototypes (lanes.yaml)" and protos.shape == (2, bank.dim)
    # the same classifier as the assignment: a whole article's mean vector gets its own label back
    t = bank.articles
    means = article_means(bank.vectors, t.column("first_chunk").to_numpy(), t.column("n_chunks").to_numpy())
    got = predict_lanes(means[:, None, :], np.ones((len(means), 1), bool), protos)
    assert [names[i] for i in got] == t.column("lane").to_pylist()
    # embedded once: the next command reads BANK/lane_prototypes.json and never loads the encoder
    import vecrag.bank.encode
    from vecrag.bank.lanes import PROTOTYPES

    cache = bank.path / PROTOTYPES
    assert cache.is_file()
    with monkeypatch.context() as m:
        m.setattr(vecrag.bank.encode, "load_encoder", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
        again, kind = context_lane_classifier(bank)
    assert kind == "prototypes (lanes.yaml)" and np.array_equal(again, protos)
    cache.write_text('{"vectors": [[NaN')  # a damaged cache: embedded again and rewritten
    again, _ = context_lane_classifier(bank)
    np.testing.assert_allclose(again, protos, atol=1e-6)
    assert np.allclose(np.asarray(__import__("json").loads(cache.read_text())["vectors"]), protos, atol=1e-6)
    bank.manifest["encoder"] = {**bank.manifest["encoder"], "name": "no-such/encoder"}  # in memory only
    cent, kind = context_lane_classifier(bank)  # the encoder cannot load: centroids, no crash
    assert kind == "train-split lane centroids" and cent.shape == (2, bank.dim)
    y.unlink()  # descriptions gone (and not the shipped preset's names): train-split centroids instead
    cent, kind = context_lane_classifier(bank)
    assert kind == "train-split lane centroids" and cent.shape == (2, bank.dim)
    np.testing.assert_allclose(np.linalg.norm(cent, axis=1), 1.0, atol=1e-5)
