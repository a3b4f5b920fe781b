"""`vecrag generate` end to end with heuristic predictors on a synthetic bank (JSON + telemetry)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_synthetic_bank, random_walk_vectors
from vecrag.bank.store import Bank, EncoderInfo, write_bank
from vecrag.cli import main
from vecrag.decode.inverter import load_inverter
from vecrag.errors import VecragError
from vecrag.fsutil import read_jsonl

HEURISTICS = ["--lvm", "heuristic:ewma:0.5", "--retriever", "heuristic:last"]


@pytest.fixture
def lane_bank(tmp_path: Path):
    return make_synthetic_bank(tmp_path / "bank", n_articles=30, lanes=["legal", "science", "history"])


def calibrate(bank, lvm: str = "heuristic:ewma:0.5", retriever: str = "heuristic:last") -> dict:
    """`vecrag calibrate` on the bank's VAL articles (K 100: the bank has 360 chunks); the loaded calibration."""
    from vecrag.decode.calibration import load_calibration

    assert main(["calibrate", str(bank.path), "--lvm", lvm, "--retriever", retriever, "--K", "100", "--quiet"]) == 0
    return load_calibration(Bank.open(bank.path), lvm, retriever, required=True)


def test_generate_json_and_telemetry(lane_bank, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vecrag.decode.profiles import load_profiles

    cal = calibrate(lane_bank)
    assert cal["path"] == str(lane_bank.path / "eval" / "calibration-heuristic_ewma_0.5+heuristic_last.json")
    capsys.readouterr()
    tele = tmp_path / "t" / "steps.jsonl"
    rc = main(["generate", str(lane_bank.path), "--prompt-ids", "12,13,14", "--steps", "6", "--json",
               "--telemetry", str(tele), *HEURISTICS, "--timeout-ms", "0", "--profile", "creative"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    steps = out["steps"]
    assert len(steps) == 6 and out["profile"] == "creative"
    assert sum(out["decisions"].values()) == 6 and out["fallbacks"] == {"error": 0, "timeout": 0, "empty": 0}
    # the calibration sets the thresholds and the cascade's weights (chosen on VAL)
    profiles = load_profiles()
    default = profiles.policy("creative", calibration=cal)
    assert out["decoder"]["calibration"] == cal["path"] and out["decoder"]["tau_snap"] == default.tau_snap
    assert out["decoder"]["tau_novel"] == default.tau_novel and out["decoder"]["K"] == 300
    chosen = cal["cascade"]["chosen"]
    assert (out["cascade"]["w_lvm"], out["cascade"]["lane_lambda"]) == (chosen["w_lvm"], chosen["lane_lambda"])
    assert out["decoder"]["feedback"] == cal["generation"]["chosen"]["feedback"]
    lane = lane_bank.lanes[12]
    pol = profiles.policy("creative", lane, cal)
    for s in steps:
        assert s["decision"] in ("SNAP", "BLEND", "NOVEL") and s["fallback"] is None
        assert s["lane"] == lane  # predicted from the prompt by the bank's lane classifier, then from used chunks
        assert 0 <= s["text_id"] < lane_bank.n and s["text"] == lane_bank.texts[s["text_id"]]
        assert s["approx"] == (s["decision"] != "SNAP")
        assert s["latency_ms"]["total"] >= s["latency_ms"]["decide"] >= 0
        if s["decision"] == "SNAP":
            assert s["x"] >= pol.tau_snap and s["text_id"] == s["neighbour_id"]
        elif s["decision"] == "NOVEL":
            assert s["x"] <= pol.tau_novel or s["skipped_ids"]
        else:
            assert pol.tau_novel < s["x"] < pol.tau_snap
        # the bands see x = c + margin_weight * (the candidate's cascade score margin), chosen on VAL
        assert s["x"] == pytest.approx(s["c"], abs=1e-6) if pol.margin_weight == 0 else s["x"] is not None
    # no repeats, no echo: every step shows a new chunk, never a prompt chunk
    shown = [s["text_id"] for s in steps]
    assert len(set(shown)) == 6 and not set(shown) & {12, 13, 14}
    assert out["continuation"] == " ".join(s["text"] if not s["approx"] else f"[~ {s['text']}]" for s in steps)
    recs = read_jsonl(tele)
    assert [r["step"] for r in recs] == list(range(6))
    assert all({"c_max", "decision", "lane", "neighbour_id", "alpha", "latency_ms"} <= set(r) for r in recs)
    # an absolute profile still takes the calibration's cascade weights; an explicit flag wins over both
    assert main(["generate", str(lane_bank.path), "--prompt-ids", "12,13,14", "--steps", "1", "--json",
                 *HEURISTICS, "--profile", "gtr-t5", "--w-lvm", "0.3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["decoder"]["tau_snap"], out["decoder"]["calibration"]) == (0.92, cal["path"])
    assert (out["cascade"]["w_lvm"], out["cascade"]["lane_lambda"]) == (0.3, chosen["lane_lambda"])


def test_generate_text_output_and_lane_errors(lane_bank, capsys: pytest.CaptureFixture) -> None:
    # the default profile (neutral) is calibrated: without a calibration it names the command to run
    assert main(["generate", str(lane_bank.path), "--prompt-ids", "0,1", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "'neutral' profile needs a calibration" in err
    assert f"vecrag calibrate {lane_bank.path} --lvm heuristic:ewma --retriever heuristic:last" in err
    assert "--profile gtr-t5" in err
    assert main(["generate", str(lane_bank.path), "--prompt-ids", "0,1", "--steps", "2", "--lane", "science",
                 "--profile", "gtr-t5"]) == 0
    out = capsys.readouterr().out
    assert out.count("lane=science") == 2 and "decisions" in out and "profile=gtr-t5" in out
    assert "SNAP at c>=0.920, NOVEL at c<=0.850" in out
    # the passage at the end: the prompt's chunks, then the continuation
    assert "article 0 chunk 0 article 0 chunk 1" in out and "  >> " in out
    assert main(["generate", str(lane_bank.path), "--prompt-ids", "0,1", "--lane", "sports",
                 "--profile", "gtr-t5"]) == 2
    err = capsys.readouterr().err
    assert "unknown lane 'sports'" in err and "history, legal, science" in err
    assert main(["generate", str(lane_bank.path), "--prompt-ids", "0", "--profile", "wild"]) == 2
    assert "conservative, creative, greedy, gtr-t5, neutral" in capsys.readouterr().err


@pytest.mark.parametrize("profile", ["gtr-t5", "greedy"])
def test_generate_never_repeats_or_echoes_the_prompt(lane_bank, profile: str, capsys: pytest.CaptureFixture) -> None:
    """A 'last' LVM keeps predicting the prompt's last chunk (14; the next chunk 15 is at cos 0.644). With the
    context kept in the shortlist and --allow-repeats, gtr-t5 (NOVEL at 0.644) shows chunk 14, the prompt, every
    step until the stall guard grounds it (14, 15, 14, ... as SNAPs), and greedy loops 15, 14, 15, ...; by default
    no step shows a prompt chunk or a chunk shown before."""
    base = ["generate", str(lane_bank.path), "--prompt-ids", "12,13,14", "--steps", "6", "--json", "--timeout-ms",
            "0", "--lvm", "heuristic:last", "--retriever", "heuristic:last", "--profile", profile]

    def shown(*extra: str) -> tuple[list[int], list[str]]:
        assert main([*base, *extra]) == 0
        steps = json.loads(capsys.readouterr().out)["steps"]
        return [s["text_id"] for s in steps], [s["decision"] for s in steps]

    ids, kinds = shown("--allow-repeats", "--keep-context-ids")
    # gtr-t5: the NOVEL prediction stays on chunk 14; from step 2 the stall guard grounds each step (SNAP 15, 14, ...)
    assert ids == ([14, 15] * 3 if profile == "gtr-t5" else [15, 14] * 3)
    assert kinds == (["NOVEL"] + ["SNAP"] * 5 if profile == "gtr-t5" else ["SNAP"] * 6)
    for extra in ((), ("--keep-context-ids",)):
        ids, kinds = shown(*extra)
        assert ids[0] == 15 and len(set(ids)) == 6 and not set(ids) & {12, 13, 14}, extra
        assert kinds == ["NOVEL" if profile == "gtr-t5" else "SNAP"] * 6


def _decoder(bank, lvm, policies, cfg=None, **kw):
    from vecrag.decode.cascade import CascadeConfig
    from vecrag.decode.generate import Decoder
    from vecrag.index.search import ExactTorchIndex
    from vecrag.scoring.predictors import HeuristicPredictor

    return Decoder(bank.vectors, bank.texts, bank.lanes, ExactTorchIndex(bank.vectors), lvm,
                   HeuristicPredictor("last"), policies, cfg or CascadeConfig(K=50, k=5, timeout_ms=None), **kw)


def test_generate_emitted_vectors_extend_context(lane_bank) -> None:
    """With a 'last' LVM, each step's prediction is the previous step's emitted vector."""
    from vecrag.decode.profiles import load_profiles
    from vecrag.scoring.predictors import HeuristicPredictor

    policies = load_profiles().policy_set("gtr-t5")
    prompt = [lane_bank.vectors_f32(np.array([5]))[0]]

    def run(prompt_texts: list[str] | None = None, **kw):
        dec = _decoder(lane_bank, HeuristicPredictor("last"), policies, **kw)
        try:
            return list(dec.generate(prompt, 3, prompt_texts=prompt_texts))
        finally:
            dec.close()

    # without the no-repeat rule: step 0 snaps to chunk 5 itself (c = 1); step 1 predicts it again and may not
    # snap back (near-dup), so it falls to the next-best
    steps = run(no_repeat=False)
    assert steps[0].decision.kind == "SNAP" and steps[0].decision.neighbour_id == 5
    assert steps[0].decision.c == pytest.approx(1.0, abs=1e-6)
    assert steps[1].decision.skipped_ids == (5,) and steps[1].decision.neighbour_id != 5
    assert steps[1].decision.c_max == pytest.approx(1.0, abs=1e-6)  # the prediction was chunk 5 again
    # the default (no_repeat): a chunk used once never enters a shortlist again, so there is nothing to skip
    steps = run()
    assert steps[0].decision.neighbour_id == 5 and steps[0].text_id == 5  # a vector prompt: chunk 5 is not banned
    assert all(not st.decision.skipped_ids for st in steps)
    assert steps[1].decision.c_max < 0.98 and len({st.text_id for st in steps}) == 3
    assert steps[1].decision.neighbour_id != 5
    # a prompt chunk's text bans it from the start
    steps = run(prompt_texts=[lane_bank.texts[5]])
    assert 5 not in [st.text_id for st in steps] + [st.decision.neighbour_id for st in steps]


def test_feedback_shown_or_emitted(lane_bank) -> None:
    """'last' LVM, prompt chunk 5 (banned by id): every step is NOVEL under gtr-t5 on this bank, emitting the
    prediction. 'emitted' feeds that prediction back (the context collapses on chunk 5's vector); 'shown' feeds
    the chunk each step shows, which is the next step's prediction."""
    from vecrag.decode.profiles import load_profiles
    from vecrag.scoring.predictors import HeuristicPredictor

    policies = load_profiles().policy_set("gtr-t5")
    v5 = lane_bank.vectors_f32(np.array([5]))[0]
    out = {}
    for fb in ("emitted", "shown"):
        dec = _decoder(lane_bank, HeuristicPredictor("last"), policies, feedback=fb, stall=None)
        try:
            out[fb] = list(dec.generate([v5], 4, [5]))
        finally:
            dec.close()
        assert [st.decision.kind for st in out[fb]] == ["NOVEL"] * 4, fb
        assert 5 not in [st.text_id for st in out[fb]] and len({st.text_id for st in out[fb]}) == 4
    for st in out["emitted"]:
        np.testing.assert_allclose(st.decision.vector, v5, atol=1e-6)
    steps = out["shown"]
    np.testing.assert_allclose(steps[0].decision.vector, v5, atol=1e-6)
    for prev, st in zip(steps, steps[1:], strict=False):
        np.testing.assert_allclose(st.decision.vector, lane_bank.vectors_f32(np.array([prev.text_id]))[0], atol=1e-6)
    assert out["emitted"][0].text_id == steps[0].text_id and out["emitted"][1].text_id != steps[1].text_id
    with pytest.raises(VecragError, match="feedback must be one of emitted, shown"):
        _decoder(lane_bank, HeuristicPredictor("last"), policies, feedback="both")
    # the stall guard (default 0.98): the emitted chain stops on chunk 5's vector, so from step 2 each step is
    # grounded on its candidate instead, and consecutive emitted vectors differ
    dec = _decoder(lane_bank, HeuristicPredictor("last"), policies, feedback="emitted")
    try:
        steps = list(dec.generate([v5], 4, [5]))
    finally:
        dec.close()
    assert steps[0].decision.kind == "NOVEL" and steps[1].decision.kind == "SNAP"
    assert steps[1].decision.fallback == "stall" and steps[1].as_dict()["fallback"] == "stall"
    for prev, st in zip(steps, steps[1:], strict=False):
        assert float(np.dot(prev.decision.vector, st.decision.vector)) <= 0.98


def test_generate_excludes_context_chunks(lane_bank) -> None:
    """exclude_context (the CLI default): chunks already in the context never come back in the shortlist."""
    from vecrag.decode.profiles import load_profiles
    from vecrag.scoring.predictors import HeuristicPredictor

    for no_repeat in (False, True):  # without the no-repeat rule, exclude_context alone keeps them out
        dec = _decoder(lane_bank, HeuristicPredictor("ewma", 0.5), load_profiles().policy_set("gtr-t5"),
                       exclude_context=True, no_repeat=no_repeat)
        steps = list(dec.generate(list(lane_bank.vectors_f32(np.array([5, 6]))), 4, [5, 6]))
        dec.close()
        used = [5, 6]
        for st in steps:
            assert st.decision.neighbour_id not in used and st.text_id not in used and not st.decision.skipped_ids
            if st.decision.used_id >= 0:
                used.append(st.decision.used_id)
        if no_repeat:
            assert len({st.text_id for st in steps}) == 4


def test_no_repeat_bans_chunks_with_the_prompts_text(tmp_path: Path) -> None:
    """Chunk 40 (another article) repeats chunk 5: the same text and vector. From prompt [5], greedy would snap
    to 40 at c = 1 (not near-dup: 40 was never used); the no-repeat rule bans it with 5 (Bank.text_group), or by
    the prompt's text when the decoder has no text groups."""
    from vecrag.decode.cascade import CascadeConfig
    from vecrag.decode.generate import Decoder
    from vecrag.decode.profiles import load_profiles
    from vecrag.index.search import ExactTorchIndex
    from vecrag.scoring.predictors import HeuristicPredictor

    vecs, arts, pos = random_walk_vectors(30, 12, 32)
    vecs[40] = vecs[5]
    texts = [f"article {a} chunk {p}" for a, p in zip(arts, pos, strict=True)]
    texts[40] = texts[5]
    bank = write_bank(tmp_path / "dup", vecs, article_ids=arts, positions=pos, texts=texts,
                      titles={int(a): f"A{a}" for a in np.unique(arts)}, encoder=EncoderInfo("dup", 32),
                      dtype="float32")
    assert bank.text_group[40] == bank.text_group[5]
    last = HeuristicPredictor("last")
    greedy = load_profiles().policy_set("greedy")
    cfg = CascadeConfig(K=50, k=5, timeout_ms=None)
    prompt = [bank.vectors_f32(np.array([5]))[0]]

    def first(dec: Decoder, **kw) -> int:
        try:
            st = next(dec.generate(prompt, 1, [5], **kw))
        finally:
            dec.close()
        assert st.decision.kind == "SNAP" and st.text_id == st.decision.neighbour_id
        return st.text_id

    dec = Decoder.for_bank(bank, ExactTorchIndex(bank.vectors), last, last, greedy, cfg, no_repeat=False)
    assert dec.exclude_context and dec.feedback == "shown" and dec.text_group is not None
    assert first(dec) == 40  # the prompt's text again
    dec = Decoder.for_bank(bank, ExactTorchIndex(bank.vectors), last, last, greedy, cfg)
    assert dec.no_repeat and first(dec) not in (5, 40)
    plain = Decoder(bank.vectors, bank.texts, None, ExactTorchIndex(bank.vectors), last, last, greedy, cfg)
    assert first(plain, prompt_texts=[texts[5]]) not in (5, 40)


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
    from vecrag.decode.profiles import load_profiles
    from vecrag.index.search import ExactTorchIndex
    from vecrag.scoring.predictors import HeuristicPredictor

    bank = make_back_bank(tmp_path / "b")
    vecs = bank.vectors_f32(np.arange(8))
    last = HeuristicPredictor("last", context_len=1)
    dec = Decoder(bank.vectors, bank.texts, None, ExactTorchIndex(bank.vectors), last, last,
                  load_profiles().policy_set("gtr-t5"), CascadeConfig(K=8, k=2, timeout_ms=None),
                  exclude_context=True, never_back=never_back, article_start=bank.article_start)
    res = dec.shortlist(vecs[[1]], vecs[[1]], np.array([-1]), [1], K=8)
    step = next(dec.generate([vecs[1]], 1, [1]))
    dec.close()
    kept = res.ids[0][res.ids[0] >= 0].tolist()  # k = 2 survivors; after c2 every chunk ties at cosine 0
    assert kept == [0, 2] if not never_back else (len(kept) == 2 and kept[0] == 2 and kept[1] not in (0, 1))
    assert step.decision.neighbour_id == (2 if never_back else 0)
    with pytest.raises(VecragError, match="article_start"):
        Decoder(bank.vectors, bank.texts, None, None, last, last, load_profiles().policy_set("gtr-t5"),
                never_back=True)


def test_blend_steps_show_the_chunk_they_blend_with(lane_bank) -> None:
    """Every step BLENDs (bands below and above every cosine). Whether its bank side is n* or the shortlist averaged
    (blend_tau), the text shown is n*'s, marked approximate: with the shown chunk fed back, both rollouts show the
    same chunks while their emitted vectors differ."""
    from vecrag.decode.policy import Policy
    from vecrag.decode.profiles import PolicySet
    from vecrag.scoring.predictors import HeuristicPredictor

    out = {}
    for tau in (0.0, 0.5):
        pol = Policy(tau_snap=1.0, tau_novel=-1.0, alpha_points=((0.0, 0.8),), blend_tau=tau)
        dec = _decoder(lane_bank, HeuristicPredictor("ewma", 0.5), PolicySet("t", pol, {}), stall=None,
                       feedback="shown")
        try:
            out[tau] = list(dec.generate([lane_bank.vectors_f32(np.array([i]))[0] for i in (3, 4, 5)], 4, [3, 4, 5]))
        finally:
            dec.close()
        assert [st.decision.kind for st in out[tau]] == ["BLEND"] * 4
        assert all(st.text_id == st.decision.neighbour_id >= 0 and st.approx for st in out[tau])
    assert [st.text_id for st in out[0.0]] == [st.text_id for st in out[0.5]]
    for a, b in zip(out[0.0], out[0.5], strict=True):
        assert float(np.dot(a.decision.vector, b.decision.vector)) < 0.999


def test_a_stalled_shortlist_blend_blends_with_its_candidate_alone(lane_bank) -> None:
    """'last' LVM and emitted feedback: each prediction is the previous blend, and a flat average of the shortlist
    barely moves. The stall guard (at 0.95 here) then blends with the candidate alone (still BLEND, fallback
    "stall") before it would SNAP, and no two consecutive emitted vectors come within the stall cosine."""
    from vecrag.decode.policy import Policy
    from vecrag.decode.profiles import PolicySet
    from vecrag.scoring.predictors import HeuristicPredictor

    pol = Policy(tau_snap=1.0, tau_novel=-1.0, alpha_points=((0.0, 0.5),), blend_tau=1.0)
    v5 = lane_bank.vectors_f32(np.array([5]))[0]
    dec = _decoder(lane_bank, HeuristicPredictor("last"), PolicySet("t", pol, {}), feedback="emitted", stall=0.95)
    try:
        steps = list(dec.generate([v5], 6, [5]))
    finally:
        dec.close()
    stalled = [st for st in steps if st.decision.fallback == "stall"]
    assert len(stalled) >= 2 and all(st.decision.kind == "BLEND" for st in stalled)
    for st in stalled:  # the blend of the prediction (the previous emitted vector) with n* alone
        i = steps.index(st)
        n_star = lane_bank.vectors_f32(np.array([st.decision.neighbour_id]))[0]
        mix = 0.5 * n_star + 0.5 * steps[i - 1].decision.vector
        np.testing.assert_allclose(st.decision.vector, mix / np.linalg.norm(mix), atol=1e-5)
    for prev, st in zip(steps, steps[1:], strict=False):
        assert float(np.dot(prev.decision.vector, st.decision.vector)) <= 0.95
