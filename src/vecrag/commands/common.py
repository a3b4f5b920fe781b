"""Set-up shared by `vecrag generate`, `vecrag eval cascade` and `vecrag eval decode`: arguments, the bank's
search index, predictors, policies, and the prompt -> context vectors path."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any

from vecrag.decode.cascade import CascadeConfig
from vecrag.errors import VecragError

log = logging.getLogger(__name__)


def add_model_arguments(p: argparse.ArgumentParser, *, lvm_default: str | None = "heuristic:ewma",
                        retriever_default: str | None = "heuristic:last") -> None:
    p.add_argument("--lvm", default=lvm_default, metavar="RUN|heuristic:KIND[:ALPHA]",
                   help="LVM run directory (`vecrag train lvm`), or a heuristic predictor")
    p.add_argument("--retriever", default=retriever_default, metavar="RUN|heuristic:KIND[:ALPHA]",
                   help="retriever run directory (`vecrag train retriever`; its query tower), or a heuristic")
    p.add_argument("--context", type=int, default=None, metavar="L",
                   help="context chunks for heuristic predictors (trained runs use their own; default 16)")
    p.add_argument("--backend", default="auto", choices=("auto", "faiss", "torch"),
                   help="search: the bank's saved FAISS index, or exact torch search")
    p.add_argument("--nprobe", type=int, default=None, help="IVF nprobe override")
    p.add_argument("--device", default="cpu", help="device for models (cpu, cuda, auto)")
    p.add_argument("--threads", type=int, default=None, help="torch/faiss threads (default: all cores)")


PROFILE_HELP = ("decode profile: conservative, neutral, creative (calibrated on VAL by `vecrag calibrate`: "
                "conservative grounds more, creative less), greedy (always SNAP to the best unused chunk), or "
                "gtr-t5 (absolute thresholds 0.92 / 0.85, set for GTR-T5 banks)")


def add_fusion_arguments(p: argparse.ArgumentParser, *, K_default: int | None) -> None:
    """The cascade's sizes and fusion weights, and the calibration file their defaults come from (`vecrag
    generate`, `eval decode`, `eval generate` and `eval cascade`)."""
    p.add_argument("--calibration", default=None, metavar="FILE.json",
                   help="calibration file (default: the one `vecrag calibrate` wrote for this LVM and retriever)")
    p.add_argument("--K", dest="K", type=int, default=K_default,
                   help="tower shortlist size (" + ("default: the profile's K; " if K_default is None else "")
                   + "at most 4096, clamped to the bank's size)")
    p.add_argument("--k", dest="k", type=int, default=10, help="final shortlist size after re-ranking")
    p.add_argument("--w-tower", type=float, default=1.0, help="fusion weight on the tower score")
    p.add_argument("--w-lvm", type=float, default=None,
                   help="fusion weight on cos(LVM prediction, candidate) (default: the calibration's, chosen on "
                        "VAL by `vecrag calibrate`; 0 without one)")
    p.add_argument("--lane-lambda", type=float, default=None,
                   help="lane re-rank: bonus added to candidates in the context's lane (default: the "
                        "calibration's; 0 without one)")


def add_cascade_arguments(p: argparse.ArgumentParser, *, timeout_default: float = 50.0,
                          multi_profile: bool = False) -> None:
    if multi_profile:
        p.add_argument("--profile", dest="profiles_list", action="append", default=None, metavar="PROFILE",
                       help=PROFILE_HELP + "; repeat for one row each (default: neutral)")
    else:
        p.add_argument("--profile", default="neutral", help=PROFILE_HELP)
    p.add_argument("--profiles", default=None, metavar="FILE.yaml",
                   help="decode profiles file (default: the shipped presets/decode.yaml)")
    add_fusion_arguments(p, K_default=None)
    p.add_argument("--w-topic", type=float, default=None,
                   help="fusion weight on cos(candidate, mean of everything read so far): keeps a rollout on its "
                        "passage's topic (default: the calibration's, chosen on VAL rollouts; 0 without one)")
    p.add_argument("--feedback", default=None, choices=("shown", "emitted"),
                   help="what each step appends to the context: the vector of the chunk it shows (default), or "
                        "the decision's vector (SNAP/BLEND/NOVEL as emitted); default: the calibration's, else shown")
    p.add_argument("--timeout-ms", type=float, default=timeout_default,
                   help="retrieval timeout per step in ms; on overrun the step is NOVEL (0 = no timeout)")


def cascade_config(args: argparse.Namespace, K: int, calibration: dict[str, Any] | None = None) -> CascadeConfig:
    """The cascade: explicit flags first, then the calibration's VAL-chosen weights, else the first stage alone."""
    from vecrag.decode.calibration import calibrated_cascade

    return calibrated_cascade(calibration, K=args.K or K, k=args.k, timeout_ms=args.timeout_ms or None,
                              w_tower=args.w_tower, w_lvm=args.w_lvm, lane_lambda=args.lane_lambda,
                              w_topic=getattr(args, "w_topic", None))


@dataclass
class DecoderSetup:
    """What a decoder needs besides the bank and the models: policies, cascade, feedback, and where they came
    from (the calibration file, or none)."""

    profile: str
    policies: Any
    cascade: CascadeConfig
    feedback: str
    calibration: str | None

    def describe(self) -> dict[str, Any]:
        p = self.policies.default
        return {"profile": self.profile, "tau_snap": p.tau_snap, "tau_novel": p.tau_novel, "force": p.force,
                "K": self.cascade.K, "k": self.cascade.k, "w_lvm": self.cascade.w_lvm,
                "lane_lambda": self.cascade.lane_lambda, "w_topic": self.cascade.w_topic, "feedback": self.feedback,
                "calibration": self.calibration}


def load_calibration_for(bank: Any, args: argparse.Namespace, *, required: bool, why: str = "") -> Any:
    """``--calibration FILE`` when given (checked against the bank), else the one `vecrag calibrate` wrote for
    ``args.lvm`` and ``args.retriever``."""
    from vecrag.decode.calibration import load_calibration, read_calibration

    if getattr(args, "calibration", None):
        return read_calibration(args.calibration, bank,
                                fix=f"pass a file written by `vecrag calibrate {bank.path} --lvm ... --retriever ...`")
    return load_calibration(bank, args.lvm, args.retriever, required=required, why=why)


def decoder_setup(bank: Any, args: argparse.Namespace, lvm: Any, tower: Any, *, profile: str | None = None,
                  profiles: Any = None) -> DecoderSetup:
    """Policies and cascade for ``profile`` (default ``args.profile``), with the calibration when it needs one."""
    from vecrag.decode.profiles import load_profiles

    profiles = profiles or load_profiles(args.profiles)
    profile = profile or args.profile
    profiles._profile(profile)
    cal = load_calibration_for(bank, args, required=profiles.is_calibrated(profile),
                               why=f"the {profile!r} profile needs")
    if cal is None:  # an absolute profile: the cascade still takes calibrated weights when they exist
        cal = load_calibration_for(bank, args, required=False)
    policies = profiles.policy_set(profile, sorted({str(x) for x in bank.lanes if x}), cal)
    from vecrag.decode.calibration import calibrated_feedback

    feedback = calibrated_feedback(cal, getattr(args, "feedback", None))
    _check_profile_shortlists(policies, args)
    return DecoderSetup(profile, policies, cascade_config(args, policies.default.K, cal), feedback,
                        (cal or {}).get("path"))


def setup_runtime(args: argparse.Namespace) -> None:
    from vecrag.commands.sizes import check_threads
    from vecrag.runtime import report_openmp, set_threads

    args.threads = check_threads(args.threads)
    set_threads(args.threads, args.threads)
    report_openmp()


def check_sizes(args: argparse.Namespace, bank: Any, *, K_default: int | None = None) -> None:
    """Bound every size typed to generate / eval cascade / eval decode / eval generate / calibrate by what ``bank``
    can give or a documented cap (the rules: :mod:`vecrag.commands.sizes`); clamped values are set in ``args``."""
    from vecrag.commands import sizes

    if args.context is not None:
        args.context = sizes.clamp_context("--context", args.context, bank)
    sizes.at_least("--nprobe", args.nprobe, 1)
    if args.K is not None:
        args.K = sizes.check_shortlist("--K", args.K, bank, default=K_default)
    args.k = sizes.clamp_count("--k", args.k, bank, default=10)
    for flag in ("--max-samples", "--max-articles"):
        sizes.at_least(flag, getattr(args, flag[2:].replace("-", "_"), None), 0, hint=f"{flag} 0 (= all)")
    sizes.at_least("--min-context", getattr(args, "min_context", None), 1)
    sizes.check_seed("--seed", getattr(args, "seed", None))
    for flag in ("--w-tower", "--w-lvm", "--lane-lambda", "--w-topic"):
        sizes.check_finite(flag, getattr(args, flag[2:].replace("-", "_"), None))
    sizes.check_finite("--timeout-ms", getattr(args, "timeout_ms", None), low=0.0, high=sizes.MAX_TIMEOUT_MS)


def _check_profile_shortlists(policies: Any, args: argparse.Namespace) -> None:
    """A profiles file's K (not typed, so not clamped) is held to the same cap as --K."""
    from vecrag.commands.sizes import MAX_SHORTLIST

    for lane, p in [("", policies.default), *sorted(policies.by_lane.items())]:
        if not 1 <= int(p.K) <= MAX_SHORTLIST and not args.K:
            raise VecragError(f"profile {policies.profile!r}{f' (lane {lane})' if lane else ''}: K={p.K} is outside "
                              f"1..{MAX_SHORTLIST}", path=getattr(args, "profiles", None),
                              hint="set K in the profiles file within it, or pass --K 500")


def open_search(bank: Any, args: argparse.Namespace) -> Any:
    from vecrag.index.load import open_index

    kw = {"nprobe": args.nprobe} if args.nprobe and args.backend != "torch" else {}
    return open_index(bank, backend=args.backend, device="cpu" if args.device == "cpu" else "auto", **kw)


def load_predictors(bank: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    from vecrag.decode.predictors import parse_predictor

    if not args.lvm or not args.retriever:
        raise VecragError("both --lvm and --retriever are needed",
                          hint="pass run directories, or heuristic:ewma / heuristic:last")
    lvm = parse_predictor(args.lvm, "lvm", device=args.device, bank=bank, context_len=args.context)
    tower = parse_predictor(args.retriever, "retriever", device=args.device, bank=bank,
                            context_len=args.context)
    return lvm, tower


def print_report(rep: dict[str, Any], args: argparse.Namespace, fmt: Any) -> int:
    """What an eval command prints: the report as JSON (``--json``), else its table and the files it wrote."""
    import json

    print(json.dumps(rep, indent=2, default=str) if args.json else fmt(rep))
    if not args.json:
        print("wrote " + ", ".join(rep["written"]))
    return 0


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="article split to evaluate")
    p.add_argument("--max-samples", type=int, default=5000, metavar="N",
                   help="evaluate a deterministic subset of N samples (0 = all)")
    p.add_argument("--min-context", type=int, default=1, help="samples need at least this many context chunks")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample subset")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where to write the JSON (default: the LVM run's metrics/, else the retriever run's, "
                        "else BANK/eval/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def out_dir(args: argparse.Namespace, bank: Any) -> Any:
    from pathlib import Path

    from vecrag.runs.layout import METRICS

    if args.out:
        return Path(args.out)
    for spec in (args.lvm, args.retriever):
        if spec and not spec.startswith("heuristic:"):
            return Path(spec) / METRICS
    return Path(bank.path) / "eval"


def eval_samples(bank: Any, args: argparse.Namespace) -> Any:
    from vecrag.bank.sequences import make_samples

    s = make_samples(bank, args.split, min_context=args.min_context, max_samples=args.max_samples or None,
                     seed=args.seed)
    if not len(s):
        raise VecragError(f"the {args.split} split has no samples with >= {args.min_context} context chunks",
                          path=bank.path, hint="use a bigger bank or another --split")
    return s


def build_decoder(bank: Any, args: argparse.Namespace, *, profiles: Any = None,
                  inverter: Any = None) -> tuple[Any, Any, DecoderSetup, Any]:
    """(lvm, tower, setup, Decoder) of a parsed `vecrag generate` command line: what `vecrag generate` and the
    library's :class:`vecrag.api.Generator` run."""
    from vecrag.decode.generate import Decoder

    lvm, tower = load_predictors(bank, args)
    setup = decoder_setup(bank, args, lvm, tower, profiles=profiles)
    decoder = Decoder.for_bank(
        bank, open_search(bank, args), lvm, tower, setup.policies, setup.cascade, lane=getattr(args, "lane", None),
        never_back=getattr(args, "never_back", False), inverter=inverter, K=args.K,
        exclude_context=not getattr(args, "keep_context_ids", False),
        no_repeat=not getattr(args, "allow_repeats", False), feedback=setup.feedback)
    return lvm, tower, setup, decoder
