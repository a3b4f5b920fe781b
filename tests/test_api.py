"""The Python API (`vecrag.Bank`, `LVM`, `Retriever`, `Generator`): the same results as the CLI, on a small bank."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import vecrag
from tests.conftest import make_synthetic_bank
from vecrag.cli import main

HEUR = ["--lvm", "heuristic:ewma", "--retriever", "heuristic:last"]


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory):
    b = make_synthetic_bank(tmp_path_factory.mktemp("api") / "bank", n_articles=40, per_article=12,
                            lanes=["legal", "science"])
    b.resplit(0, (0.5, 0.25, 0.25))
    return vecrag.Bank.open(b.path)


def test_search_returns_typed_hits_as_the_cli(bank, capsys: pytest.CaptureFixture) -> None:
    hits = bank.search(bank.vectors_f32(np.array([7]))[0], k=4)
    assert len(hits) == 1 and len(hits[0]) == 4
    top = hits[0][0]
    assert isinstance(top, vecrag.Hit) and top.id == 7 and top.score == pytest.approx(1.0, abs=1e-3)
    assert top.text == bank.texts[7] and top.title == "Article 0" and top.position == 7
    assert main(["search", str(bank.path), "--id", "7", "-k", "4", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)["results"]
    assert [h.id for h in hits[0]] == [r["id"] for r in cli]
    two = bank.search(bank.vectors_f32(np.array([3, 30])), k=2)
    assert [h[0].id for h in two] == [3, 30]
    with pytest.raises(vecrag.VecragError, match="query vectors must be"):
        bank.search(np.zeros((2, 5)), k=2)


def test_models_predict_from_ids_or_vectors(bank) -> None:
    lvm = vecrag.LVM.load("heuristic:ewma", bank=bank)
    tower = vecrag.Retriever.load("heuristic:last", bank=bank)
    v = lvm.predict([10, 11, 12])
    assert v.shape == (bank.dim,) and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(lvm.predict(bank.vectors_f32(np.array([10, 11, 12]))), v, atol=1e-6)
    q = tower.query([[10, 11, 12], [20, 21, 22]])
    assert q.shape == (2, bank.dim)
    np.testing.assert_allclose(q[1], bank.vectors_f32(np.array([22]))[0], atol=1e-5)  # "last" = the last chunk


def test_generator_is_what_vecrag_generate_runs(bank, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(vecrag.VecragError, match="vecrag calibrate"):
        vecrag.Generator(bank)  # the calibrated default profile needs a calibration
    assert main(["calibrate", str(bank.path), *HEUR, "--quiet", "--max-articles", "5"]) == 0
    capsys.readouterr()
    with vecrag.Generator(bank, timeout_ms=None) as gen:
        steps = list(gen.generate([12, 13, 14], steps=5))
        text = gen.continuation([12, 13, 14], steps=5)
    assert main(["generate", str(bank.path), "--prompt-ids", "12,13,14", "--steps", "5", "--timeout-ms", "0",
                 *HEUR, "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert [s.text_id for s in steps] == [s["text_id"] for s in cli["steps"]]
    assert [s.decision.kind for s in steps] == [s["decision"] for s in cli["steps"]]
    assert text == cli["continuation"] and len({s.text_id for s in steps}) == 5
    with vecrag.Generator(bank, profile="greedy", timeout_ms=None) as gen:
        assert {s.decision.kind for s in gen.generate([12, 13, 14], steps=3)} == {"SNAP"}
    with pytest.raises(vecrag.VecragError, match="unknown Generator option"):
        vecrag.Generator(bank, profile="greedy", w_lmv=1.0)


def test_readme_python_example_runs(bank, tmp_path: Path) -> None:
    """The README's Python example, with its paths pointed at this test's bank (a synthetic bank has no text
    encoder: the texts become a chunk's vector and bank ids)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace('"banks/wiki-300"', repr(str(bank.path))).replace('"runs/lvm"', '"heuristic:ewma"')
    code = code.replace('"runs/retriever"', '"heuristic:last"')
    code = code.replace('"Alabama is a state in the southeastern United States."', "[12, 13, 14]")
    code = code.replace('"the history of the Roman Empire"', "bank.vectors_f32([3])[0]")  # no text encoder here
    calib = Path(bank.path) / "eval" / "calibration-heuristic_ewma+heuristic_last.json"
    if not calib.exists():
        assert main(["calibrate", str(bank.path), *HEUR, "--quiet", "--max-articles", "5"]) == 0
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    assert scope["hits"] and isinstance(scope["hits"][0], vecrag.Hit)


def test_train_through_the_api_is_the_cli_run(bank, tmp_path: Path) -> None:
    """vecrag.train_lvm / train_retriever: the command's loop and run directory; resumable; errors raise."""
    run = tmp_path / "lvm"
    summary = vecrag.train_lvm(bank, out=run, config="lvm-tiny", overrides={"train.epochs": 1})
    assert summary["run"] == str(run) and summary["steps"] > 0 and (run / "run.json").exists()
    assert vecrag.LVM.load(run, bank=bank).predict([1, 2, 3]).shape == (bank.dim,)
    with pytest.raises(vecrag.VecragError, match="already holds a run|--resume"):
        vecrag.train_lvm(bank, out=run, config="lvm-tiny")
    again = vecrag.train_lvm(resume=run)  # a finished run resumes to the same end
    assert again["steps"] == summary["steps"] and again["best"] == summary["best"]
    with pytest.raises(vecrag.VecragError, match="allow-config-change"):
        vecrag.train_lvm(resume=run, overrides={"train.epochs": 2})
    ret = tmp_path / "ret"
    s = vecrag.train_retriever(bank, out=ret, config="retriever-tiny", overrides={"train.epochs": 1})
    assert s["run"] == str(ret) and s["steps"] > 0
    assert vecrag.Retriever.load(ret, bank=bank).query([1, 2, 3]).shape == (bank.dim,)


def test_evaluate_returns_what_the_command_prints(bank, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rep = vecrag.evaluate("cascade", bank, lvm="heuristic:ewma", retriever="heuristic:last", split="test",
                          out=tmp_path / "c", json=True)
    assert rep["written"] == [str(tmp_path / "c" / "cascade_eval-test.json")]
    on_disk = json.loads(Path(rep["written"][0]).read_text())
    assert on_disk["rows"] == json.loads(json.dumps(rep["rows"]))  # the file holds the same report
    assert main(["eval", "cascade", str(bank.path), *HEUR, "--split", "test", "--out", str(tmp_path / "d"),
                 "--quiet", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["rows"] == on_disk["rows"]
    base = vecrag.evaluate("baselines", bank, split="val", ks=[1, 10], no_text_baselines=True,
                           out=tmp_path / "b.json")
    assert {"last", "ewma-0.5", "oracle"} <= set(base["methods"]) and base["methods"]["oracle"]["R@1"] == 1.0
    assert base["written"] == [str(tmp_path / "b.json")]
    gen = vecrag.evaluate("generate", bank, lvm="heuristic:ewma", retriever="heuristic:last", profile=["greedy"],
                          steps=4, max_articles=4, out=tmp_path / "g")
    assert gen["rows"]["true continuation"]["coverage"] == 1.0 and gen["n_articles"] == 4
    with pytest.raises(vecrag.VecragError, match="unknown evaluation"):
        vecrag.evaluate("speed", bank)
    with pytest.raises(vecrag.VecragError, match="bad options"):
        vecrag.evaluate("cascade", bank, no_such_flag=3)
