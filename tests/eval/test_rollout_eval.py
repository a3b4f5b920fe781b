"""Generation rollouts (`vecrag eval generate`): metrics with known answers, the no-repeat / no-echo rule, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_synthetic_bank
from vecrag.bank.store import EncoderInfo, write_bank
from vecrag.cli import main
from vecrag.decode.cascade import CascadeConfig
from vecrag.decode.generate import Decoder
from vecrag.decode.policy import NOVEL, SNAP, Policy
from vecrag.decode.profiles import PolicySet
from vecrag.eval.rollout_eval import Prompt, make_prompts, rollout_articles, run_rollouts, score_rollout
from vecrag.index.search import ExactTorchIndex
from vecrag.scoring.predictors import HeuristicPredictor


@pytest.fixture
def bank(tmp_path: Path):
    b = make_synthetic_bank(tmp_path / "bank", n_articles=40, per_article=14, dim=32)
    b.resplit(0, (0.5, 0.0, 0.5))
    return type(b).open(b.path)


def always(kind: str) -> PolicySet:
    return PolicySet(kind, Policy(force=kind), {})


def decoder(bank, kind: str, **kw) -> Decoder:
    ewma = HeuristicPredictor("ewma", 0.5, context_len=8)
    cfg = CascadeConfig(K=50, k=5, w_lvm=0.0, lane_lambda=0.0, timeout_ms=None)
    return Decoder.for_bank(bank, ExactTorchIndex(bank.vectors_f32()), ewma, ewma, always(kind), cfg, lane="",
                            **kw)


def test_score_rollout_known_answers(tmp_path: Path) -> None:
    """Two articles of 8 chunks; chunk 9 (article 1) has the text of chunk 4 (article 0)."""
    vecs = np.eye(16, dtype=np.float32)
    texts = [f"t{i}" for i in range(16)]
    texts[9] = texts[4]
    b = write_bank(tmp_path / "b", vecs, article_ids=np.repeat([0, 1], 8), positions=np.tile(np.arange(8), 2),
                   texts=texts, titles={0: "A", 1: "B"}, encoder=EncoderInfo("eye", 16), dtype="float32")
    pr = Prompt(0, vecs[:3], [0, 1, 2], texts[:3], np.arange(3, 7))
    # truth 3,4,5,6: show 3 (hit, forward), 9 (same text as 4: a hit at step 2, not forward: other article),
    # 5 (hit, forward), then 5 again (repeat, not forward)
    emitted = [3, 9, 5, 5]
    s = score_rollout(b, pr, emitted, vecs[emitted])
    assert s["hit"].tolist() == [1, 1, 1, 0]
    assert s["forward"].tolist() == [1, 0, 1, 0]
    assert s["repeat"].tolist() == [0, 0, 0, 1]
    assert s["echo"].tolist() == [0, 0, 0, 0]
    assert s["coverage"][0] == pytest.approx(3 / 4)  # 3, 4 (by text), 5 of 3..6
    assert s["cos"].tolist() == pytest.approx([1, 0, 1, 0])
    assert np.isnan(s["collapse"][0]) and s["collapse"][1:].tolist() == pytest.approx([0, 0, 1])
    s = score_rollout(b, pr, [1, -1, 6, 4], vecs[[1, 0, 6, 4]])  # a prompt chunk, nothing shown, 6, 4
    assert s["echo"].tolist() == [1, 0, 0, 0] and s["hit"].tolist() == [0, 0, 0, 0]
    assert s["forward"].tolist() == [0, 0, 1, 0]  # 4 comes after 6: going back
    assert s["coverage"][0] == pytest.approx(2 / 4)


def test_true_continuation_scores_one(bank) -> None:
    starts = rollout_articles(bank, "test", 3, 8)
    n_test = len(bank.split_articles("test"))
    assert len(starts) == n_test > 10 and all(bank.article_start[s] == s for s in starts)
    rows = run_rollouts(bank, {"truth": None}, make_prompts(bank, starts, 3, 8), 8)
    r = rows["truth"]
    assert r["coverage"] == 1.0 and r["hit"] == 1.0 and r["forward"] == 1.0
    assert r["repeat"] == 0.0 and r["echo"] == 0.0 and r["cos"] == pytest.approx(1.0)
    assert r["hit_by_step"] == [1.0] * 8 and r["n_articles"] == n_test


def test_novel_chain_loops_without_the_rule_and_never_with_it(bank) -> None:
    """The LVM alone (NOVEL every step, its prediction fed back) shows the same nearest chunk again and again
    and echoes the prompt; the no-repeat rule removes both, on the same prompts."""
    prompts = make_prompts(bank, rollout_articles(bank, "test", 3, 8), 3, 8)
    loop = decoder(bank, NOVEL, feedback="emitted", no_repeat=False, exclude_context=False)
    fixed = decoder(bank, NOVEL, feedback="emitted")
    rows = run_rollouts(bank, {"loop": loop, "fixed": fixed}, prompts, 8)
    assert rows["loop"]["repeat"] > 0.3 and rows["loop"]["echo"] > 0.1
    assert rows["fixed"]["repeat"] == 0.0 and rows["fixed"]["echo"] == 0.0
    assert rows["loop"]["decisions"] == {NOVEL: 1.0}
    # the NOVEL chain barely moves: consecutive emitted vectors almost equal
    assert rows["fixed"]["collapse"] > 0.9
    greedy = run_rollouts(bank, {"g": decoder(bank, SNAP, feedback="shown")}, prompts, 8)["g"]
    assert greedy["repeat"] == 0.0 and greedy["echo"] == 0.0 and greedy["collapse"] < rows["fixed"]["collapse"]
    assert greedy["coverage"] > 0.3  # random-walk articles: the greedy walk follows its article


def test_text_prompts_are_never_echoed(bank) -> None:
    """Prompts given as text (no bank ids): a chunk with a prompt chunk's text is never shown."""

    def embed(text: str) -> tuple[list[str], np.ndarray]:  # the bank's own chunk texts -> their vectors
        chunks = re.findall(r"article \d+ chunk \d+", text)
        ids = [bank.texts.index(c) for c in chunks]
        return chunks, bank.vectors_f32(np.asarray(ids))

    starts = rollout_articles(bank, "test", 3, 8)
    prompts = make_prompts(bank, starts, 3, 8, embed)
    assert prompts[0].ids is None and prompts[0].texts == [bank.texts[i] for i in range(starts[0], starts[0] + 3)]
    rows = run_rollouts(bank, {"loop": decoder(bank, SNAP, no_repeat=False, exclude_context=False),
                               "fixed": decoder(bank, SNAP)}, prompts, 8)
    assert rows["loop"]["echo"] > 0.05
    assert rows["fixed"]["echo"] == 0.0 and rows["fixed"]["repeat"] == 0.0


def test_eval_generate_cli(bank, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ev"
    rc = main(["eval", "generate", str(bank.path), "--lvm", "heuristic:ewma", "--retriever", "heuristic:last",
               "--profile", "greedy", "--profile", "gtr-t5", "--max-articles", "6", "--steps", "5",
               "--out", str(out), "--quiet", "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n_articles"] == 6 and rep["S"] == 5 and rep["prompts"] == "bank ids"
    rows = rep["rows"]
    assert list(rows) == ["decoder:greedy", "decoder:gtr-t5", "greedy: ewma query", "greedy: heuristic:last",
                          "LVM alone (heuristic:ewma:0.5)", "true continuation"]
    assert rows["true continuation"]["coverage"] == 1.0
    for name, r in rows.items():
        assert r["repeat"] == 0.0 and r["echo"] == 0.0, name
        assert len(r["cos_by_step"]) == 5 and 0.0 <= r["coverage"] <= 1.0
    assert rows["decoder:greedy"]["decisions"] == {"SNAP": 1.0}
    assert rows["LVM alone (heuristic:ewma:0.5)"]["decisions"] == {"NOVEL": 1.0}
    assert json.loads((out / "generate_eval-test.json").read_text())["rows"].keys() == rows.keys()
    assert main(["eval", "generate", str(bank.path), "--lvm", "heuristic:ewma", "--retriever", "heuristic:last",
                 "--profile", "greedy", "--steps", "100"]) == 2
    assert "--prompt-chunks + --steps = 103 is more than the bank's longest article" in capsys.readouterr().err


def test_a_pasted_passage_is_not_echoed(bank) -> None:
    """A text prompt chunked otherwise than the bank (two bank chunks pasted into one prompt chunk): neither bank
    chunk is shown, though no prompt chunk equals either text."""
    s = int(rollout_articles(bank, "test", 3, 8)[0])
    pasted = [f"{bank.texts[s]} {bank.texts[s + 1]}"]
    vec = bank.vectors_f32(np.array([s + 1]))
    shown = [st.text_id for st in decoder(bank, SNAP, no_repeat=False).generate(list(vec), 4, None, pasted)]
    assert {s, s + 1} & set(shown)  # without the rule the pasted chunks come back
    shown = [st.text_id for st in decoder(bank, SNAP).generate(list(vec), 4, None, pasted)]
    assert not {s, s + 1} & set(shown) and len(set(shown)) == 4
