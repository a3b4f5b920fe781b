"""generate / eval decode with trained runs (tiny LVM + tiny retriever, one epoch each on a synthetic bank)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_synthetic_bank
from vecrag.bank.sequences import gather_context, make_samples
from vecrag.cli import main
from vecrag.decode.predictors import load_lvm_predictor, load_tower_predictor
from vecrag.errors import VecragError
from vecrag.scoring.predictors import HeuristicPredictor, TorchPredictor


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("trained")
    bank = make_synthetic_bank(root / "bank", n_articles=30, lanes=["legal", "science"])
    for task, cfg in (("lvm", "lvm-tiny"), ("retriever", "retriever-tiny")):
        assert main(["train", task, str(bank.path), "train.epochs=1", "--config", cfg, "--out",
                     str(root / task), "--quiet"]) == 0
    return bank.path, root / "lvm", root / "retriever"


def test_loaders_wrap_trained_runs(runs) -> None:
    from vecrag.bank.store import Bank

    bank_path, lvm_run, ret_run = runs
    bank = Bank.open(bank_path)
    lvm = load_lvm_predictor(lvm_run, bank=bank)
    tower = load_tower_predictor(ret_run, bank=bank)
    assert isinstance(lvm, TorchPredictor) and isinstance(tower, TorchPredictor)
    s = make_samples(bank, "test")
    ctx, mask = gather_context(bank.vectors, s.context_ids(lvm.context_len))
    v = lvm(ctx, mask)
    assert v.shape == (len(s), bank.dim)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # the tower starts from its anchor (last) and one tiny epoch keeps it close to it
    q = tower(ctx[:, -tower.context_len:], mask[:, -tower.context_len:])
    anchor = HeuristicPredictor("last")(ctx, mask)
    assert float(np.mean(np.sum(q * anchor, axis=1))) > 0.5
    with pytest.raises(VecragError, match="not found"):
        load_lvm_predictor(bank_path / "nope")
    with pytest.raises(VecragError, match="not an LVM run"):
        load_lvm_predictor(bank_path)


def test_generate_and_eval_decode_with_runs(runs, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vecrag.bank.store import Bank
    from vecrag.decode.calibration import load_calibration
    from vecrag.decode.profiles import load_profiles

    bank_path, lvm_run, ret_run = runs
    args = ["--lvm", str(lvm_run), "--retriever", str(ret_run)]
    gen = ["generate", str(bank_path), "--prompt-ids", "24,25,26", "--steps", "3", "--json", *args]
    assert main(gen) == 2  # the default profile (neutral) is calibrated, and these runs are not yet
    err = capsys.readouterr().err
    assert "vecrag calibrate" in err and str(lvm_run / "calibration.json") in err
    assert main(["calibrate", str(bank_path), *args, "--K", "100", "--max-articles", "3", "--quiet"]) == 0
    capsys.readouterr()
    cal = load_calibration(Bank.open(bank_path), str(lvm_run), str(ret_run), required=True)
    assert cal["path"] == str(lvm_run / "calibration.json")  # next to the LVM run
    assert cal["lvm"] == str(lvm_run.resolve()) and cal["n_samples"] > 0
    neutral = load_profiles().policy("neutral", calibration=cal)
    assert main(gen) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lvm"] == "lvm:lvm" and out["retriever"] == "tower:retriever" and len(out["steps"]) == 3
    assert out["decoder"]["calibration"] == cal["path"] and out["decoder"]["tau_snap"] == neutral.tau_snap
    shown = [s["text_id"] for s in out["steps"]]
    assert len(set(shown)) == 3 and not set(shown) & {24, 25, 26}  # no repeats, no echo of the prompt
    assert main(["eval", "decode", str(bank_path), *args, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n_samples"] > 0 and abs(sum(rep["overall"][f"pct_{k}"] for k in ("SNAP", "BLEND", "NOVEL")) - 1) < 1e-9
    assert rep["calibration"] == cal["path"]
    assert (rep["policy"]["tau_snap"], rep["policy"]["tau_novel"]) == (neutral.tau_snap, neutral.tau_novel)
    assert rep["fusion"]["w_lvm"] == cal["cascade"]["chosen"]["w_lvm"]
    assert (lvm_run / "metrics" / "decode_eval-test-neutral.json").exists()  # default: the LVM run's metrics/
