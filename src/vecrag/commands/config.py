"""`vecrag config show PRESET|FILE|RUN [KEY=VALUE ...]` and `vecrag config list`: every config key with its value,
type and help (the help lives in the dataclass fields' ``metadata["help"]``)."""

from __future__ import annotations

import argparse
import importlib
import json
import re
from pathlib import Path
from typing import Any

from vecrag.errors import VecragError

COMMAND = ("config",)
HELP = "show a run config (preset, YAML file or run directory) key by key with its help; list the presets"
DESCRIPTION = """\
vecrag config show PRESET|FILE|RUN [KEY=VALUE ...] prints every key of the config a training run would use: the
dataclass defaults <- the preset or YAML file (or RUN/config.yaml) <- the KEY=VALUE overrides, each key with its
value, type and help; a value that differs from the dataclass default is marked with * and its default shown.
The task (lvm or retriever) is RUN/run.json's, else the one whose config the YAML loads into (--task to say it).
vecrag config list names the shipped run presets with their one-line description.

Examples:
  vecrag config list
  vecrag config show lvm-tiny train.epochs=7
  vecrag config show retriever-gpu mining.mode=sync --json
  vecrag config show runs/lvm-gru
"""

# task -> (module, dataclass) of its run config; imported on use (both modules import torch)
TASKS = {"lvm": ("vecrag.train.lvm_task", "LVMConfig"),
         "retriever": ("vecrag.train.retriever_config", "RetrieverConfig")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from vecrag.config import FlagWithOverrides, OptionWithOverrides

    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keep DESCRIPTION's lines and examples
    sub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    show = sub.add_parser("show", help="print every key of a config with its value, type and help",
                          description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("source", metavar="PRESET|FILE|RUN", nargs="?",
                      help="a shipped preset (vecrag config list), a YAML file or a run directory (holds config.yaml)")
    show.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help="config overrides, e.g. train.lr=1e-3")
    show.add_argument("--json", action=FlagWithOverrides, metavar="KEY=VALUE", help="print JSON instead of text")
    show.add_argument("--task", default=None, action=OptionWithOverrides, metavar="lvm|retriever",
                      help="the run config to read the YAML as (default: run.json's task, else the one it loads into)")
    show.set_defaults(extra_overrides=[], extra_positionals=[])
    lst = sub.add_parser("list", help="name the shipped run presets with their one-line description")
    lst.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(_config_parser=p)


def config_class(task: str) -> type:
    module, name = TASKS[task]
    return getattr(importlib.import_module(module), name)


def _flat_keys(data: Any, prefix: str = "") -> set[str]:
    if not isinstance(data, dict):
        return {prefix.rstrip(".")} if prefix else set()
    return set().union(*(_flat_keys(v, f"{prefix}{k}.") for k, v in data.items())) if data else set()


def load_task_config(path: str | Path, overrides: list[str], task: str | None = None,
                     name: str = "") -> tuple[str, Any]:
    """``(task, config)``: ``path`` loaded with ``overrides`` as ``task``'s config, or (task None) as the one run
    config it loads into. ``name`` (a preset's name, ``lvm-tiny``) breaks a tie. When none loads, the error is the
    one of the task whose keys the file's and the overrides' keys match best (unknown key, bad value, ...)."""
    from vecrag.config import load_config, parse_overrides, read_yaml, valid_keys

    if task is not None:
        if task not in TASKS:
            raise VecragError(f"unknown task {task!r}", hint="--task " + " or --task ".join(TASKS))
        return task, load_config(config_class(task), path, overrides)
    loaded: dict[str, Any] = {}
    errors: dict[str, VecragError] = {}
    for t in TASKS:
        try:
            loaded[t] = load_config(config_class(t), path, overrides)
        except VecragError as e:
            errors[t] = e
    named = [t for t in TASKS if Path(name).name.startswith(t)]
    if len(loaded) == 1 or (loaded and len(named) == 1 and named[0] in loaded):
        t = next(iter(loaded)) if len(loaded) == 1 else named[0]
        return t, loaded[t]
    if loaded:
        raise VecragError(f"the config loads as both a {' and a '.join(loaded)} config", path=path,
                          hint="say which with --task " + " or --task ".join(loaded))
    keys = _flat_keys(read_yaml(path)) | _flat_keys(parse_overrides(overrides))
    score = {t: len(keys & set(valid_keys(config_class(t)))) for t in TASKS}
    best = max(TASKS, key=lambda t: (score[t], t in named))
    if keys and score[best] == 0:
        raise VecragError(f"not a run config: none of its keys ({', '.join(sorted(keys)[:6])}) is a key of the "
                          f"{' or the '.join(TASKS)} config", path=path,
                          hint="`vecrag config list` names the run presets")
    raise errors[best]


def run_presets() -> list[dict[str, str]]:
    """The shipped presets that load as a run config: name, task, path and one-line description."""
    from vecrag.config import PRESETS_DIR

    out = []
    for p in sorted(PRESETS_DIR.glob("*.yaml")):
        try:
            task, _ = load_task_config(p, [], name=p.stem)
        except VecragError:
            continue  # decode profiles, lanes: not run configs
        out.append({"name": p.stem, "task": task, "path": str(p), "description": describe(p)})
    return out


def describe(path: Path, width: int = 100) -> str:
    """A preset's one-line description: the first sentence of its leading comment, without a ``NAME:`` prefix."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(x for x in lines if x)
    text = re.sub(rf"^{re.escape(path.stem)}\s*:\s*", "", text)
    text = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    text = text[:1].upper() + text[1:]
    if len(text) > width:
        text = text[: width - 4].rsplit(" ", 1)[0] + " ..."
    return text


def _source(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``(PRESET|FILE|RUN, overrides)`` wherever the KEY=VALUE items and the source were put."""
    from vecrag.config import is_override

    source = args.source
    overrides = list(args.overrides or []) + list(args.extra_overrides or [])
    loose = list(args.extra_positionals or [])
    if source is not None and is_override(source) and not Path(source).exists():
        overrides.insert(0, source)
        source = None
    if source is None and loose:
        source = loose.pop(0)
    if source is None or loose:
        raise VecragError("give one PRESET, YAML file or RUN directory" +
                          (f" (unexpected: {' '.join(loose)})" if loose else ""),
                          hint="e.g. vecrag config show lvm-tiny train.epochs=7 (`vecrag config list` names the "
                               "presets)")
    return source, overrides


def show(args: argparse.Namespace) -> dict[str, Any]:
    """What `vecrag config show` prints: source, task, overrides, the nested config and one entry per key."""
    from vecrag.config import config_fields, resolve_preset, to_dict
    from vecrag.runs.layout import CONFIG, RECORD

    source, overrides = _source(args)
    task = args.task
    src = Path(source)
    if src.is_dir():
        path = src / CONFIG
        if not path.is_file():
            raise VecragError(f"not a run directory (no {CONFIG})", path=src,
                              hint="give the --out directory of `vecrag train lvm|retriever`, a preset or a YAML file")
        if task is None:
            try:
                task = json.loads((src / RECORD).read_text(encoding="utf-8")).get("task")
            except (OSError, ValueError, AttributeError):
                task = None  # no or unreadable run.json: the YAML says which config it is
            task = task if task in TASKS else None
    else:
        try:
            path = resolve_preset(source)
        except VecragError:
            names = ", ".join(p["name"] for p in run_presets())
            raise VecragError(f"no preset, YAML file or run directory {source!r}",
                              hint=f"give a run preset ({names}), a YAML file or a run directory (holds "
                                   f"{CONFIG})") from None
    # a preset or file is loaded by the name given, so errors name it as `vecrag train` does
    task, cfg = load_task_config(path if src.is_dir() else source, overrides, task, name=src.name)
    keys = [{"key": f.key, "type": f.type, "value": f.value, "default": f.default, "changed": f.changed,
             "help": f.help, "choices": list(f.choices) if f.choices else None} for f in config_fields(cfg)]
    return {"source": str(path), "task": task, "overrides": overrides, "config": to_dict(cfg), "keys": keys}


def _fmt(value: Any) -> str:
    return json.dumps(value, default=str)


def format_show(info: dict[str, Any]) -> str:
    keys = info["keys"]
    kw = max(len(k["key"]) for k in keys)
    vw = min(24, max(len(_fmt(k["value"])) for k in keys))
    tw = max(len(k["type"]) for k in keys)
    over = f" <- {' '.join(info['overrides'])}" if info["overrides"] else ""
    lines = [f"# {info['task']} config: {info['source']}{over}",
             "# * = differs from the dataclass default (shown in [default: ...])"]
    for k in keys:
        text = k["help"] + (f" (one of: {', '.join(map(str, k['choices']))})" if k["choices"] else "")
        if k["changed"]:
            text += f"  [default: {_fmt(k['default'])}]"
        lines.append(f"{'*' if k['changed'] else ' '} {k['key']:<{kw}}  {_fmt(k['value']):<{vw}}  {k['type']:<{tw}}  "
                     f"{text}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.config_command == "list":
        presets = run_presets()
        if args.json:
            print(json.dumps(presets, indent=2))
        else:
            nw = max(len(p["name"]) for p in presets)
            tw = max(len(p["task"]) for p in presets)
            for p in presets:
                print(f"{p['name']:<{nw}}  {p['task']:<{tw}}  {p['description']}")
            print("\nEvery key with its help: vecrag config show PRESET [KEY=VALUE ...]")
        return 0
    if args.config_command != "show":
        args._config_parser.print_help()
        return 2
    info = show(args)
    print(json.dumps(info, indent=2, default=str) if args.json else format_show(info))
    return 0
