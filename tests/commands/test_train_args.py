"""KEY=VALUE config overrides are accepted wherever they appear on `vecrag train lvm|retriever` command lines
(the shared ``vecrag.config.OptionWithOverrides`` action), including after the last option."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import make_synthetic_bank
from vecrag.cli import build_parser, main
from vecrag.config import command_overrides
from vecrag.errors import VecragError

PLACEMENTS = [
    ["B", "--config", "X", "--out", "R", "train.epochs=3", "train.lr=0.1"],       # after the last option
    ["B", "--config", "X", "train.epochs=3", "--out", "R", "train.lr=0.1"],       # after --config and --out
    ["B", "train.epochs=3", "train.lr=0.1", "--config", "X", "--out", "R"],       # right after BANK
    ["--config", "X", "--out", "R", "B", "train.epochs=3", "train.lr=0.1"],       # BANK after the options
    ["B", "--config", "X", "--out", "R", "--quiet", "train.epochs=3", "train.lr=0.1"],  # after a flag
]


@pytest.mark.parametrize("command", ["lvm", "retriever"])
@pytest.mark.parametrize("argv", PLACEMENTS)
def test_overrides_anywhere(command, argv):
    args = build_parser().parse_args(["train", command, *argv])
    bank, overrides = command_overrides(args)
    assert (bank, args.config, args.out) == ("B", "X", "R")
    assert overrides == ["train.epochs=3", "train.lr=0.1"]


@pytest.mark.parametrize("command", ["lvm", "retriever"])
def test_resume_with_trailing_overrides_is_parsed(command):
    args = build_parser().parse_args(["train", command, "--resume", "R", "train.epochs=4"])
    bank, overrides = command_overrides(args)
    assert (bank, args.resume, overrides) == (None, "R", ["train.epochs=4"])


def test_stray_positional_is_a_user_error():
    args = build_parser().parse_args(["train", "lvm", "B", "--out", "R", "C"])
    with pytest.raises(VecragError, match="unexpected argument"):
        command_overrides(args)


def test_lvm_run_honours_an_override_after_out(tmp_path, capsys):
    bank = make_synthetic_bank(tmp_path / "bank", n_articles=12, per_article=6, dim=16)
    run = tmp_path / "run"
    rc = main(["train", "lvm", str(bank.path), "--config", "lvm-tiny", "--out", str(run), "--quiet",
               "train.epochs=1", "train.max_steps=2", "train.val_max_queries=20"])
    assert rc == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 1 and cfg["train"]["max_steps"] == 2
    assert "unrecognized" not in capsys.readouterr().err


def test_quiet_stays_a_flag():
    args = build_parser().parse_args(["train", "retriever", "B", "--out", "R"])
    assert args.quiet is False
    args = build_parser().parse_args(["train", "retriever", "B", "--quiet", "--out", "R"])
    assert args.quiet is True and command_overrides(args) == ("B", [])
