"""Config help from the dataclasses (``metadata["help"]``), the generic walk over it (``config_fields``) and
`vecrag config show PRESET|FILE|RUN [KEY=VALUE ...]` / `vecrag config list`."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from vecrag.cli import main
from vecrag.config import PRESETS_DIR, config_fields, from_dict, load_config, save_config, to_dict
from vecrag.errors import VecragError
from vecrag.train.lvm_task import LVMConfig
from vecrag.train.mining.async_miner import AsyncConfig
from vecrag.train.mining.curriculum import FilterConfig
from vecrag.train.retriever_config import RetrieverConfig

RUN_PRESETS = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml") if p.stem not in ("decode", "lanes"))


def show(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["config", "show", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def key_line(out: str, key: str) -> str:
    (line,) = [x for x in out.splitlines() if x[2:].split(" ", 1)[0] == key]
    return line


# ---- the help lives in the dataclasses ------------------------------------------------------------------------
def all_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """Every field of a nested dataclass, the sections too."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        out.append((prefix + f.name, f))
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(all_fields(hints[f.name], f"{prefix}{f.name}."))
    return out


@pytest.mark.parametrize("cls", [LVMConfig, RetrieverConfig, AsyncConfig, FilterConfig])
def test_every_field_has_help(cls):
    fields = all_fields(cls)
    assert len(fields) >= 3
    missing = [k for k, f in fields if not str(f.metadata.get("help", "")).strip()]
    assert not missing, f"{cls.__name__}: fields without metadata['help']: {missing}"


@pytest.mark.parametrize("cls, n", [(LVMConfig, 30), (RetrieverConfig, 50)])
def test_config_fields_walks_every_key_with_its_help(cls, n):
    fields = list(config_fields(cls))
    assert len(fields) >= n and len({f.key for f in fields}) == len(fields)
    for f in fields:
        assert f.help.strip() and f.type, f
        assert f.value == f.default and not f.changed  # the type itself: every value is its default
    by_key = {f.key: f for f in fields}
    assert by_key["train.amp"].choices == ("auto", "bf16", "off")
    assert by_key["train.epochs"].type == "int" and by_key["train.lr"].type == "float"
    assert by_key["train.tensorboard"].type == "bool"


def test_config_fields_defaults_come_from_the_parent_factory():
    """LVMConfig's train section is TrainConfig(early_stop_metric="cos"); a preset's values are not defaults."""
    cfg = load_config(LVMConfig, "lvm-tiny", ["train.epochs=7"])
    by_key = {f.key: f for f in config_fields(cfg)}
    assert by_key["train.early_stop_metric"].default == "cos"
    assert by_key["train.epochs"].value == 7 and by_key["train.epochs"].default == 3 and by_key["train.epochs"].changed
    retr = {f.key: f for f in config_fields(RetrieverConfig)}
    assert retr["train.epochs"].default == 10 and "auto" in retr["train.early_stop_metric"].help


# ---- vecrag config show ----------------------------------------------------------------------------------------
def test_show_marks_a_changed_value_and_prints_its_help(capsys):
    rc, out, err = show(capsys, "lvm-tiny", "train.epochs=7")
    assert rc == 0, err
    line = key_line(out, "train.epochs")
    assert line.startswith("*") and " 7 " in line and "int" in line
    assert "passes over the training samples" in line and "[default: 3]" in line
    assert key_line(out, "train.grad_accum").startswith(" ")  # lvm-tiny leaves it at its default
    assert "one of: auto, bf16, off" in key_line(out, "train.amp")
    assert "train.epochs=7" in out.splitlines()[0] and "lvm" in out.splitlines()[0]
    for f in config_fields(LVMConfig):  # every key, with its help
        assert f.help in key_line(out, f.key)


def test_show_json_round_trips(capsys):
    rc, out, err = show(capsys, "lvm-tiny", "--json", "train.epochs=7", "model.kind=lstm")  # overrides after --json
    assert rc == 0, err
    data = json.loads(out)
    expected = load_config(LVMConfig, "lvm-tiny", ["train.epochs=7", "model.kind=lstm"])
    assert data["task"] == "lvm" and data["overrides"] == ["train.epochs=7", "model.kind=lstm"]
    assert from_dict(LVMConfig, data["config"]) == expected
    keys = {k["key"]: k for k in data["keys"]}
    assert keys["train.epochs"]["value"] == 7 and keys["train.epochs"]["changed"] is True
    assert keys["train.epochs"]["default"] == 3 and keys["train.epochs"]["help"]
    assert keys["train.grad_accum"]["changed"] is False
    # the per-key values, given back as KEY=VALUE overrides, rebuild the same config
    again = load_config(LVMConfig, None, [f"{k}={json.dumps(v['value'])}" for k, v in keys.items()])
    assert again == expected
    assert {k for k, v in keys.items() if v["changed"]} == {
        f.key for f in config_fields(expected) if f.value != f.default}


def test_show_a_retriever_preset(capsys):
    rc, out, err = show(capsys, "retriever-gpu", "mining.mode=sync", "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["task"] == "retriever"
    assert from_dict(RetrieverConfig, data["config"]) == load_config(RetrieverConfig, "retriever-gpu",
                                                                     ["mining.mode=sync"])


@pytest.mark.parametrize("override", ["train.epochz=7", "nope=1", "train.epochs=abc", "train.lr=fast",
                                      "train.amp=fp8", "train.epochs=0", "train.lr"])
def test_show_errors_are_the_load_errors(capsys, override):
    """An unknown key or a bad value: exit 2 and the same message and hint as load_config gives."""
    with pytest.raises(VecragError) as e:
        load_config(LVMConfig, "lvm-tiny", [override])
    rc, out, err = show(capsys, "lvm-tiny", override)
    assert rc == 2 and not out
    assert str(e.value) in err and "fix:" in err


def test_show_unknown_key_and_bad_value_messages(capsys):
    rc, _, err = show(capsys, "lvm-tiny", "train.epochz=7")
    assert rc == 2 and "unknown config key(s) train.epochz" in err and "valid keys: train.epochs" in err
    rc, _, err = show(capsys, "lvm-tiny", "train.epochs=abc")
    assert rc == 2 and "config key train.epochs expects int, got 'abc'" in err


def test_show_unknown_preset_and_non_run_config(capsys, tmp_path):
    rc, _, err = show(capsys, "lvm-nope")
    assert rc == 2 and "no preset, YAML file or run directory 'lvm-nope'" in err
    assert all(name in err for name in RUN_PRESETS)
    rc, _, err = show(capsys, "decode")
    assert rc == 2 and "not a run config" in err and "vecrag config list" in err
    rc, _, err = show(capsys, str(tmp_path))
    assert rc == 2 and "not a run directory (no config.yaml)" in err
    rc, _, err = show(capsys)
    assert rc == 2 and "give one PRESET" in err


def test_show_an_ambiguous_yaml_needs_task(capsys, tmp_path):
    y = tmp_path / "train-only.yaml"
    y.write_text("train:\n  epochs: 5\n")
    rc, _, err = show(capsys, str(y))
    assert rc == 2 and "--task" in err
    rc, out, err = show(capsys, str(y), "--task", "retriever", "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["task"] == "retriever" and data["config"]["train"]["epochs"] == 5
    rc, out, err = show(capsys, str(y), "loss.w_nce=0.1", "--json")  # an LVM-only key decides
    assert rc == 0 and json.loads(out)["task"] == "lvm"


@pytest.mark.parametrize("with_record", [True, False])
def test_show_a_run_directory(capsys, tmp_path, with_record):
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(RetrieverConfig, "retriever-tiny", ["train.epochs=4", "bank=/banks/b"])
    save_config(cfg, run / "config.yaml")
    if with_record:
        (run / "run.json").write_text(json.dumps({"format": 1, "task": "retriever"}))
    rc, out, err = show(capsys, str(run), "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["task"] == "retriever" and data["source"] == str(run / "config.yaml")
    assert data["config"] == to_dict(cfg)
    rc, out, err = show(capsys, str(run), "train.patience=9")
    assert rc == 0, err
    assert key_line(out, "train.epochs").startswith("*") and " 4 " in key_line(out, "train.epochs")
    assert " 9 " in key_line(out, "train.patience") and '"/banks/b"' in key_line(out, "bank")


def test_show_a_run_directory_of_an_lvm(capsys, tmp_path):
    run = tmp_path / "lvm-run"
    run.mkdir()
    save_config(load_config(LVMConfig, "lvm-default"), run / "config.yaml")
    (run / "run.json").write_text(json.dumps({"task": "lvm"}))
    rc, out, err = show(capsys, str(run))
    assert rc == 0, err
    assert out.startswith("# lvm config:") and "loss.w_nce" in out


# ---- vecrag config list ----------------------------------------------------------------------------------------
def test_list_names_every_run_preset(capsys):
    assert len(RUN_PRESETS) >= 7
    assert main(["config", "list"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if line.strip() and not line.startswith("Every")]
    assert names == RUN_PRESETS  # decode and lanes are not run configs
    tiny = next(line for line in out.splitlines() if line.startswith("lvm-tiny "))
    assert "lvm" in tiny.split()[1] and "tests" in tiny
    assert main(["config", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in data] == RUN_PRESETS
    assert {p["task"] for p in data} == {"lvm", "retriever"} and all(p["description"] for p in data)
    assert all(p["task"] == p["name"].split("-")[0] for p in data)


def test_config_without_subcommand_prints_help(capsys):
    assert main(["config"]) == 2
    assert "show" in capsys.readouterr().out


@pytest.mark.parametrize("task", ["lvm", "retriever"])
def test_train_help_points_to_config_show(capsys, task):
    with pytest.raises(SystemExit) as e:
        main(["train", task, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "vecrag config show" in out and "help" in out


@pytest.mark.parametrize("content", [bytes(range(256)), "train:\n  epochs: 3\n".encode("utf-16")],
                         ids=["binary", "utf-16"])
def test_a_config_file_that_is_not_utf8_is_refused_with_its_name(tmp_path, capsys, content):
    """A binary or UTF-16 file given as --config / config show: one clear error naming the file, no traceback,
    and no run directory created."""
    bad = tmp_path / "cfg.yaml"
    bad.write_bytes(content)
    with pytest.raises(VecragError, match="not a UTF-8 text file") as e:
        load_config(LVMConfig, bad)
    assert str(bad) in str(e.value)
    assert main(["config", "show", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "not a UTF-8 text file" in err and str(bad) in err and "Traceback" not in err
    assert main(["train", "lvm", str(tmp_path / "bank"), "--config", str(bad), "--out", str(tmp_path / "run")]) != 0
    assert "not a UTF-8 text file" in capsys.readouterr().err and not (tmp_path / "run").exists()
