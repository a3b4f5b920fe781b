"""Typed dataclass configs: YAML presets plus ``key=value`` overrides with dotted keys.

The machinery is generic: any (possibly nested) dataclass works. A run config nests sections::

    @dataclass
    class LVMConfig:
        bank: str = ""
        train: TrainConfig = field(default_factory=TrainConfig)
        model: LVMModelConfig = field(default_factory=LVMModelConfig)

    cfg = load_config(LVMConfig, "lvm-default.yaml", ["train.lr=1e-3", "model.kind=lstm"])

Override values are parsed with ``yaml.safe_load`` and then coerced to the field's annotated type (so
``1e-3``, which YAML 1.1 reads as a string, still becomes a float). A field may declare
``metadata={"choices": (...)}``. A dataclass may define ``validate(self)`` raising ``VecragError``; it runs
after every load. Unknown keys and ill-typed values raise ``VecragError`` listing the valid keys. Each field
carries its help in ``metadata={"help": ...}``; :func:`config_fields` walks a config with it (``vecrag config show``).
``path`` may name a shipped preset (``lvm-tiny`` or ``lvm-tiny.yaml`` in ``vecrag/presets``).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import yaml

from vecrag.errors import VecragError
from vecrag.fsutil import atomic_write_text

T = TypeVar("T")
PRESETS_DIR = Path(__file__).resolve().parent / "presets"


# ---- the shared training config -----------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything the shared training loop (vecrag.train.loop.Trainer) reads."""

    epochs: int = field(default=3, metadata={"help": "passes over the training samples"})
    batch_size: int = field(default=64, metadata={"help": "samples per micro-batch (per process under torchrun)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW), reached after the warm-up"})
    lr_min: float = field(default=1e-5, metadata={"help": "cosine floor: the learning rate at the last step"})
    warmup_steps: int = field(default=0, metadata={"help": "optimizer steps of linear warm-up (or see warmup_ratio; "
                                                           "the larger wins)"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "warm-up as a fraction of all optimizer steps (or see "
                                                               "warmup_steps; the larger wins)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    clip_norm: float = field(default=1.0, metadata={"help": "clip the gradient norm to this (0 = no clipping)"})
    seed: int = field(default=0, metadata={"help": "seed of the model initialisation, the shuffling and dropout"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N | mps (auto: CUDA, then MPS, "
                                                          "then CPU)"})
    amp: str = field(default="auto", metadata={"choices": ("auto", "bf16", "off"),
                                               "help": "mixed precision: auto = bf16 autocast on CUDA, off elsewhere"})
    log_every: int = field(default=50, metadata={"help": "optimizer steps between train records in log.jsonl"})
    ckpt_every: int = field(default=0, metadata={"help": "optimizer steps between step checkpoints (0 = per epoch "
                                                         "only)"})
    keep_last: int = field(default=3, metadata={"help": "step checkpoints kept (older ones are deleted)"})
    early_stop_metric: str = field(default="cos", metadata={"help": "validation metric that picks best.pt and "
                                                                    "drives early stopping (a key of the task's "
                                                                    "validate())"})
    early_stop_mode: str = field(default="max", metadata={"choices": ("max", "min"),
                                                          "help": "whether a larger (max) or smaller (min) "
                                                                  "early_stop_metric is better"})
    patience: int = field(default=0, metadata={"help": "epochs without improvement before stopping (0 = never stop "
                                                       "early)"})
    swa_last: int = field(default=0, metadata={"help": "average the weights of the last K epoch checkpoints at the "
                                                       "end, kept if they validate better (0 = off)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0 = no limit; for "
                                                        "tests)"})
    torch_threads: int = field(default=0, metadata={"help": "CPU threads torch uses (0 = all cores)"})
    context: int = field(default=10, metadata={"help": "L: chunks of context before the predicted chunk"})
    val_max_queries: int = field(default=2000, metadata={"help": "validation queries drawn from the val split "
                                                                 "(0 = all)"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard scalars under RUN/tb when "
                                                              "tensorboard is installed"})
    deterministic: bool = field(default=False, metadata={"help": "torch.use_deterministic_algorithms(True): "
                                                                 "deterministic GPU kernels, slower"})
    cuda_graph: str = field(default="auto", metadata={"choices": ("auto", "on", "off"),
                                                      "help": "run each training step as one replayed CUDA graph "
                                                              "(auto: on CUDA in one process with grad_accum 1; "
                                                              "elsewhere the step runs eager)"})

    def validate(self) -> None:
        check(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        check(self.grad_accum >= 1, "grad_accum", self.grad_accum, "must be >= 1")
        check(self.lr > 0, "lr", self.lr, "must be > 0")
        check(0 <= self.lr_min <= self.lr, "lr_min", self.lr_min, "must be in [0, lr]")
        check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "must be in [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        check(self.clip_norm >= 0, "clip_norm", self.clip_norm, "must be >= 0 (0 = off)")
        check(self.log_every >= 1, "log_every", self.log_every, "must be >= 1")
        check(self.ckpt_every >= 0, "ckpt_every", self.ckpt_every, "must be >= 0 (0 = per epoch only)")
        check(self.keep_last >= 1, "keep_last", self.keep_last, "must be >= 1")
        check(self.patience >= 0, "patience", self.patience, "must be >= 0 (0 = off)")
        check(self.swa_last >= 0, "swa_last", self.swa_last, "must be >= 0 (0 = off)")
        check(self.max_steps >= 0, "max_steps", self.max_steps, "must be >= 0 (0 = no limit)")
        check(self.torch_threads >= 0, "torch_threads", self.torch_threads, "must be >= 0 (0 = all cores)")
        check(self.context >= 1, "context", self.context, "must be >= 1")
        check(self.val_max_queries >= 0, "val_max_queries", self.val_max_queries, "must be >= 0 (0 = all)")
        dev = self.device
        check(dev in ("auto", "cpu", "mps", "cuda") or dev.startswith("cuda:"), "device", dev,
              "must be auto, cpu, cuda, cuda:N or mps")


def check(ok: bool, key: str, value: Any, rule: str) -> None:
    """Raise a VecragError for a config value that breaks a rule."""
    if not ok:
        raise VecragError(f"config value {key}={value!r} {rule}", hint=f"fix it in the YAML or pass {key}=...")


# ---- generic machinery ----------------------------------------------------------------------------------
def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a (nested) dataclass type."""
    out: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out.extend(valid_keys(t, f"{prefix}{f.name}."))
        else:
            out.append(f"{prefix}{f.name}")
    return out


class ConfigField(NamedTuple):
    """One leaf of a config, as :func:`config_fields` yields it."""

    key: str                    # dotted key, e.g. "train.lr"
    type: str                   # the annotated type's name: "int", "float", "str", "bool", "list[int]", ...
    value: Any                  # the config's value
    default: Any                # the value in the dataclass built with no arguments
    help: str                   # metadata["help"] ("" when the field has none)
    choices: tuple | None       # metadata["choices"]

    @property
    def changed(self) -> bool:
        return self.value != self.default


def type_name(tp: Any) -> str:
    """``int`` -> "int", ``list[int]`` -> "list[int]", ``str | None`` -> "str | None"."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def config_fields(cfg: Any, prefix: str = "", defaults: Any = None) -> Iterator[ConfigField]:
    """Walk a (nested) dataclass, instance or type, and yield every leaf key with its type, value, default, help
    and choices, in declaration order. Defaults come from the dataclass built with no arguments, so a section's
    defaults are what its parent's ``default_factory`` builds (LVMConfig's ``train.early_stop_metric`` is "cos")."""
    cls = cfg if isinstance(cfg, type) else type(cfg)
    if defaults is None:
        defaults = cls()
    if isinstance(cfg, type):
        cfg = defaults
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, value, default = hints[f.name], getattr(cfg, f.name), getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            yield from config_fields(value, f"{prefix}{f.name}.", default)
        else:
            yield ConfigField(prefix + f.name, type_name(tp), value, default, f.metadata.get("help", ""),
                              f.metadata.get("choices"))


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (YAML/JSON/torch.load(weights_only=True) safe)."""
    return dataclasses.asdict(cfg)


def _coerce(value: Any, tp: Any, key: str, choices: tuple | None) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, choices)
            except VecragError:
                continue
        raise VecragError(f"config key {key}: {value!r} fits none of {tp}")
    ok = True
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            value = value.lower() in ("true", "yes", "on")
        ok = isinstance(value, bool)
    elif tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str):
            try:
                f = float(value)
                value = int(f) if f.is_integer() else value
            except ValueError:
                pass
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no/true/false as booleans: take the word back
            words = ("on", "true", "yes") if value else ("off", "false", "no")
            value = next((w for w in words if choices and w in choices), words[1])
        elif isinstance(value, int | float):
            value = str(value)
        ok = isinstance(value, str)
    elif origin in (list, tuple):
        ok = isinstance(value, list | tuple)
        if ok:
            (inner, *_) = typing.get_args(tp) or (Any,)
            value = [_coerce(v, inner, key, None) for v in value] if inner is not Any else list(value)
            value = tuple(value) if origin is tuple else value
    elif origin is dict:
        ok = isinstance(value, dict)
    if not ok:
        name = getattr(tp, "__name__", str(tp))
        raise VecragError(f"config key {key} expects {name}, got {value!r}", hint=f"e.g. {key}=<{name}>")
    if choices is not None and value not in choices:
        raise VecragError(f"config key {key}={value!r} is not one of {', '.join(map(str, choices))}",
                          hint=f"pass {key}={choices[0]}")
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, *, prefix: str = "", where: str | Path | None = None) -> T:
    """Build a dataclass from a nested dict; unknown keys and bad types raise VecragError."""
    if data is not None and not isinstance(data, dict):
        raise VecragError(f"config section {prefix or '(top)'} must be a mapping", path=where)
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise VecragError(f"unknown config key(s) {', '.join(prefix + str(k) for k in unknown)}", path=where,
                          hint="valid keys: " + ", ".join(valid_keys(cls, prefix)))
    kwargs = {}
    for k, v in data.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise VecragError(f"config key {prefix}{k} is a section; give a mapping", path=where,
                                  hint="valid keys: " + ", ".join(valid_keys(tp, f"{prefix}{k}.")))
            kwargs[k] = from_dict(tp, v, prefix=f"{prefix}{k}.", where=where)
        else:
            kwargs[k] = _coerce(v, tp, prefix + k, names[k].metadata.get("choices"))
    return cls(**kwargs)


def validate_config(cfg: Any, where: str | Path | None = None) -> None:
    """Run ``validate()`` on the dataclass and every nested section."""
    for f in dataclasses.fields(cfg):
        sub = getattr(cfg, f.name)
        if dataclasses.is_dataclass(sub):
            validate_config(sub, where)
    fn = getattr(cfg, "validate", None)
    if callable(fn):
        try:
            fn()
        except VecragError as e:
            if where is not None and e.path is None:
                raise VecragError(str(e), path=where) from e
            raise


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "model.kind=lstm"]`` -> nested dict, values parsed with yaml.safe_load."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise VecragError(f"override {item!r} is not key=value", hint="e.g. train.lr=1e-3")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise VecragError(f"override {item!r} has an empty key", hint="e.g. train.lr=1e-3")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise VecragError(f"override {item!r} conflicts with another override of {p}")
        node[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_preset(path: str | Path) -> Path:
    """A YAML path, or the name of a shipped preset (``lvm-tiny``)."""
    p = Path(path)
    if p.exists():
        return p
    for cand in (PRESETS_DIR / p.name, PRESETS_DIR / f"{p.name}.yaml"):
        if cand.exists():
            return cand
    shipped = sorted(q.stem for q in PRESETS_DIR.glob("*.yaml"))
    raise VecragError("config file not found", path=path, hint="give a YAML path or one of the presets: "
                      + ", ".join(shipped))


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = resolve_preset(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise VecragError(f"not a UTF-8 text file ({e.reason} at byte {e.start}): a binary file or another encoding",
                          path=p, hint="give a YAML config (UTF-8), a preset name or a run directory") from e
    except yaml.YAMLError as e:
        raise VecragError(f"invalid YAML ({e})", path=p, hint="fix the syntax") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise VecragError("config YAML must be a mapping of keys to values", path=p)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Defaults <- YAML file (or shipped preset) <- ``key=value`` overrides; validated."""
    data = read_yaml(path) if path is not None else {}
    data = _merge(data, parse_overrides(overrides))
    cfg = from_dict(cls, data, where=path)
    validate_config(cfg, where=path)
    return cfg


def apply_overrides(cfg: T, overrides: Iterable[str]) -> T:
    """A new config: ``cfg`` with overrides applied and validated."""
    data = _merge(to_dict(cfg), parse_overrides(overrides))
    out = from_dict(type(cfg), data)
    validate_config(out)
    return out


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config atomically as YAML."""
    atomic_write_text(path, dump_yaml(cfg))


# ---- command-line KEY=VALUE overrides ----------------------------------------------------------------------
class OptionWithOverrides(argparse.Action):
    """An option whose first value is its own and whose further values are ``KEY=VALUE`` config overrides.

    argparse takes positionals only in their first run, so with ``BANK --config X --out RUN train.epochs=3``
    the trailing override would be rejected as unrecognized. Options using this action (``nargs="+"``)
    collect what follows them: ``KEY=VALUE`` items go to ``namespace.extra_overrides``, any other item (a
    BANK given after the options) to ``namespace.extra_positionals``. :func:`command_overrides` merges
    them with the positional ones. Shared by ``vecrag train lvm`` and ``vecrag train retriever``.
    """

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        kwargs.setdefault("nargs", "+")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        first, *rest = values if isinstance(values, list) else [values]
        setattr(namespace, self.dest, first)
        _collect(namespace, rest)


class FlagWithOverrides(OptionWithOverrides):
    """A store-true flag (``--quiet``) that, like :class:`OptionWithOverrides`, collects what follows it."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        kwargs.setdefault("nargs", "*")
        kwargs.setdefault("default", False)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, True)
        _collect(namespace, list(values or []))


def _collect(namespace: argparse.Namespace, rest: list[str]) -> None:
    over = [v for v in rest if is_override(v)]
    namespace.extra_overrides = [*(getattr(namespace, "extra_overrides", None) or []), *over]
    namespace.extra_positionals = [*(getattr(namespace, "extra_positionals", None) or []),
                                   *(v for v in rest if not is_override(v))]


def is_override(item: str) -> bool:
    """``KEY=VALUE`` with a plausible dotted key (not an option, not a path that merely contains '=')."""
    key = item.split("=", 1)[0]
    return "=" in item and not item.startswith("-") and bool(key) and "/" not in key


def command_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """``(BANK or None, overrides)`` from a parser built with :class:`OptionWithOverrides` options, a
    ``bank`` positional (``nargs="?"``) and an ``overrides`` positional (``nargs="*"``), wherever the user
    put the ``KEY=VALUE`` items."""
    bank = getattr(args, "bank", None)
    overrides = list(getattr(args, "overrides", None) or []) + list(getattr(args, "extra_overrides", None) or [])
    if bank is not None and is_override(bank) and not Path(bank).exists():  # `--resume RUN k=v` or `k=v ...`
        overrides.insert(0, bank)
        bank = None
    loose = list(getattr(args, "extra_positionals", None) or [])
    if loose and bank is None:
        bank = loose.pop(0)
    if loose:
        raise VecragError(f"unexpected argument(s) {' '.join(loose)}",
                          hint="give BANK once; config overrides are KEY=VALUE (e.g. train.lr=1e-3)")
    return bank, overrides
