"""`vecrag generate` end to end with heuristic predictors on a synthetic bank (JSON + telemetry)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_synthetic_bank
from vecrag.cli import main
from vecrag.decode.inverter import load_inverter
from vecrag.errors import VecragError
from vecrag.fsutil import read_jsonl


@pytest.fixture
def lane_bank(tmp_path: Path):
    return make_synthetic_bank(tmp_path / "bank", n_articles=30, lanes=["legal", "science", "history"])


def test_generate_json_and_telemetry(lane_bank, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tele = tmp_path / "t" / "steps.jsonl"
    rc = main(["generate", str(lane_bank.path), "--prompt-ids", "12,13,14", "--steps", "6", "--json",
               "--telemetry", str(tele), "--lvm", "heuristic:ewma:0.5", "--retriever", "heuristic:last",
               "--timeout-ms", "0", "--profile", "creative"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    steps = out["steps"]
    assert len(steps) == 6 and out["profile"] == "creative"
    assert sum(out["decisions"].values()) == 6 and out["fallbacks"] == {"error": 0, "timeout": 0, "empty": 0}
    lane = lane_bank.lanes[12]
    for s in steps:
        assert s["decision"] in ("SNAP", "BLEND", "NOVEL") and s["fallback"] is None
        assert s["lane"] == lane  # predicted from the prompt by the bank's lane classifier, then from used chunks
        assert 0 <= s["text_id"] < lane_bank.n and s["text"] == lane_bank.texts[s["text_id"]]
        assert s["approx"] == (s["decision"] != "SNAP")
        assert s["latency_ms"]["total"] >= s["latency_ms"]["decide"] >= 0
        if s["decision"] == "SNAP":
            assert s["c"] >= 0.90 and s["text_id"] == s["neighbour_id"]
        if s["decision"] == "NOVEL":
            assert s["c"] <= 0.82 or s["skipped_ids"]
    assert steps[0]["neighbour_id"] not in (12, 13, 14) or steps[0]["c"] <= 0.98  # prompt ids are "recent"
    recs = read_jsonl(tele)
    assert [r["step"] for r in recs] == list(range(6))
    assert all({"c_max", "decision", "lane", "neighbour_id", "alpha", "latency_ms"} <= set(r) for r in recs)


def test_generate_text_output_and_lane_errors(lane_bank, capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", str(lane_bank.path), "--prompt-ids", "0,1", "--steps", "2", "--lane", "science"]) == 0
    out = capsys.readouterr().out
    assert out.count("lane=science") == 2 and "decisions" in out
    assert main(["generate", str(lane_bank.path), "--prompt-ids", "0,1", "--lane", "sports"]) == 2
    err = capsys.readouterr().err
    assert "unknown lane 'sports'" in err and "history, legal, science" in err
    assert main(["generate", str(lane_bank.path), "--prompt-ids", "0", "--profile", "wild"]) == 2
    assert "conservative, creative, minilm, neutral" in capsys.readouterr().err


def test_generate_emitted_vectors_extend_context(lane_bank) -> None:
    """With a 'last' LVM, each step's prediction is the previous step's emitted vector."""
    from vecrag.decode.cascade import CascadeConfig
    from vecrag.decode.generate import Decoder
    from vecrag.decode.predictors import HeuristicPredictor
    from vecrag.decode.profiles import load_profiles
    from vecrag.index import ExactTorchIndex

    dec = Decoder(lane_bank.vectors, lane_bank.texts, lane_bank.lanes, ExactTorchIndex(lane_bank.vectors),
                  HeuristicPredictor("last"), HeuristicPredictor("last"),
                  load_profiles().policy_set("neutral"), CascadeConfig(K=50, k=5, timeout_ms=None))
    steps = list(dec.generate([lane_bank.vectors_f32(np.array([5]))[0]], 3))
    dec.close()
    # step 0 snaps to chunk 5 itself (c = 1); step 1 may not (near-dup), so it falls to the next-best
    assert steps[0].decision.kind == "SNAP" and steps[0].decision.neighbour_id == 5
    assert steps[1].decision.skipped_ids == (5,) and steps[1].decision.neighbour_id != 5


def test_generate_excludes_context_chunks(lane_bank) -> None:
    """exclude_context (the CLI default): chunks already in the context never come back in the shortlist."""
    from vecrag.decode.cascade import CascadeConfig
    from vecrag.decode.generate import Decoder
    from vecrag.decode.predictors import HeuristicPredictor
    from vecrag.decode.profiles import load_profiles
    from vecrag.index import ExactTorchIndex

    dec = Decoder(lane_bank.vectors, lane_bank.texts, lane_bank.lanes, ExactTorchIndex(lane_bank.vectors),
                  HeuristicPredictor("ewma", 0.5), HeuristicPredictor("last"),
                  load_profiles().policy_set("creative"), CascadeConfig(K=50, k=5, timeout_ms=None),
                  exclude_context=True)
    steps = list(dec.generate(list(lane_bank.vectors_f32(np.array([5, 6]))), 4, [5, 6]))
    dec.close()
    used = [5, 6]
    for st in steps:
        assert st.decision.neighbour_id not in used and st.text_id not in used and not st.decision.skipped_ids
        if st.decision.used_id >= 0:
            used.append(st.decision.used_id)


def test_configured_missing_inverter_is_a_clear_error() -> None:
    with pytest.raises(VecragError, match="cannot be imported"):
        load_inverter("no_such_pkg.inv:Inverter")
    with pytest.raises(VecragError, match="no inverter named 'vec2text'"):
        load_inverter("vec2text")
    with pytest.raises(VecragError, match="no attribute"):
        load_inverter("numpy:NoSuchInverter")
    assert load_inverter(None) is None


@pytest.mark.parametrize("never_back", [False, True])
def test_generate_never_back_skips_the_articles_earlier_chunks(tmp_path, never_back) -> None:
    """Article 0 = c0..c3; prompt [c1]. The query c1 ranks c0 (0.8) above c2 (0.6): the default shortlist (context
    dropped) starts with c0, behind the prompt in its article; never_back drops it and offers c2."""
    from tests.conftest import make_back_bank
    from vecrag.decode.cascade import CascadeConfig
    from vecrag.decode.generate import Decoder
    from vecrag.decode.predictors import HeuristicPredictor
    from vecrag.decode.profiles import load_profiles
    from vecrag.index import ExactTorchIndex

    bank = make_back_bank(tmp_path / "b")
    vecs = bank.vectors_f32(np.arange(8))
    last = HeuristicPredictor("last", context_len=1)
    dec = Decoder(bank.vectors, bank.texts, None, ExactTorchIndex(bank.vectors), last, last,
                  load_profiles().policy_set("neutral"), CascadeConfig(K=8, k=2, timeout_ms=None),
                  exclude_context=True, never_back=never_back, article_start=bank.article_start)
    res = dec.shortlist(vecs[[1]], vecs[[1]], np.array([-1]), [1], K=8)
    step = next(dec.generate([vecs[1]], 1, [1]))
    dec.close()
    kept = res.ids[0][res.ids[0] >= 0].tolist()  # k = 2 survivors; after c2 every chunk ties at cosine 0
    assert kept == [0, 2] if not never_back else (len(kept) == 2 and kept[0] == 2 and kept[1] not in (0, 1))
    assert step.decision.neighbour_id == (2 if never_back else 0)
    with pytest.raises(VecragError, match="article_start"):
        Decoder(bank.vectors, bank.texts, None, None, last, last, load_profiles().policy_set("neutral"),
                never_back=True)
