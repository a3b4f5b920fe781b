"""Decode profiles and per-lane overrides (``presets/decode.yaml`` or a user file).

Two kinds of profile. A *calibrated* profile states an intent (``snap_precision``, ``novel_share``: see
:mod:`vecrag.decode.calibration`) and gets its cosine thresholds from a calibration of the (bank, LVM,
retriever) on VAL; it refuses to run without one. An *absolute* profile states the cosines themselves
(``tau_snap``, ``tau_novel``; ``gtr-t5`` keeps the thresholds set for GTR-T5 banks).

Resolution for ``(profile, lane)``: ``defaults`` <- ``profiles[profile]`` <- ``lanes[lane]`` <-
``profiles[profile]["lanes"][lane]``; each layer replaces only the keys it names, except that the intent keys
of a lane override are *added* to its calibrated profile's (a shift: ``legal`` grounds more under every
calibrated profile). Absolute thresholds in a lane override apply to absolute profiles only.

Lanes: a lane the bank has but the overrides do not list uses its profile's values (never an error);
a lane the *user asks for* (``--lane``) must exist in the bank (when the bank is known) or, without a
bank, in the overrides; otherwise :func:`resolve_policy` raises a VecragError listing the valid lanes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vecrag.decode.calibration import INTENT_KEYS, confidence, intent_of, thresholds
from vecrag.decode.policy import DEFAULT_ALPHA_POINTS, Policy
from vecrag.errors import VecragError

PRESET = "decode.yaml"
POLICY_KEYS = ("tau_snap", "tau_novel", "alpha_points", "near_dup", "near_dup_window", "K", "force", "pick",
               "blend_tau")
ABSOLUTE_KEYS = ("tau_snap", "tau_novel")


def _check_keys(d: Any, where: str, path: str | Path, allow: tuple[str, ...] = ()) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise VecragError(f"{where} must be a mapping of policy keys, got {type(d).__name__}", path=path)
    bad = sorted(set(d) - set(POLICY_KEYS) - set(INTENT_KEYS) - set(allow))
    if bad:
        raise VecragError(f"{where}: unknown key(s) {', '.join(map(str, bad))}", path=path,
                          hint=f"valid keys: {', '.join(POLICY_KEYS + INTENT_KEYS + allow)}")
    for k in INTENT_KEYS:
        v = d.get(k)
        if k in d and (isinstance(v, bool) or not isinstance(v, int | float) or not -1.0 <= float(v) <= 1.0):
            raise VecragError(f"{where}: {k} must be a number in [-1, 1] (a share), got {v!r}", path=path)
    return dict(d)


ALPHA_BAND = (0.85, 0.92)  # the (tau_novel, tau_snap) band the alpha knots are written for


def rescale_alpha(points: Any, lo: float, hi: float, clip: bool = True) -> list[list[float]]:
    """Alpha knots written for the ALPHA_BAND moved linearly onto a calibrated band ``[lo, hi]``: the weight on
    the bank vector keeps its shape (0.3 just above tau_novel, 0.7 near tau_snap) on any encoder."""
    a, b = ALPHA_BAND
    out, prev = [], -np.inf
    for c, w in points:
        x = lo + (float(c) - a) / (b - a) * (hi - lo)
        x = float(np.clip(x, -1.0, 1.0)) if clip else x  # a cosine scale unless the bands carry a margin term
        if x <= prev:
            continue
        out.append([x, float(w)])
        prev = x
    return out


@dataclass(frozen=True)
class Profiles:
    """Parsed decode presets: defaults, named profiles, global lane overrides."""

    defaults: dict[str, Any]
    profiles: dict[str, dict[str, Any]]
    lanes: dict[str, dict[str, Any]]
    source: str = PRESET

    @property
    def names(self) -> list[str]:
        return sorted(self.profiles)

    @property
    def override_lanes(self) -> list[str]:
        lanes = set(self.lanes)
        for p in self.profiles.values():
            lanes.update((p.get("lanes") or {}).keys())
        return sorted(lanes)

    def _profile(self, profile: str) -> dict[str, Any]:
        if profile not in self.profiles:
            raise VecragError(f"unknown decode profile {profile!r}", path=self.source,
                              hint=f"choose one of: {', '.join(self.names)}")
        return self.profiles[profile]

    def is_calibrated(self, profile: str) -> bool:
        """True when the profile states an intent (its thresholds come from a calibration)."""
        return any(k in self._profile(profile) for k in INTENT_KEYS)

    def policy(self, profile: str, lane: str | None = None, calibration: dict[str, Any] | None = None) -> Policy:
        """The policy for a profile and (optionally) a lane; unlisted lanes get the profile's values.
        A calibrated profile needs ``calibration`` (:func:`vecrag.decode.calibration.load_calibration`)."""
        prof = self._profile(profile)
        calibrated = self.is_calibrated(profile)
        d = {**self.defaults, **{k: v for k, v in prof.items() if k != "lanes" and k not in INTENT_KEYS}}
        shift: dict[str, Any] = {}
        if lane:
            for over in (self.lanes.get(lane, {}), (prof.get("lanes") or {}).get(lane, {})):
                for k, v in over.items():
                    if k in INTENT_KEYS:
                        shift[k] = shift.get(k, 0.0) + float(v)
                    elif not (calibrated and k in ABSOLUTE_KEYS):
                        d[k] = v
        if calibrated:
            if calibration is None:
                raise VecragError(f"profile {profile!r} is calibrated: its thresholds come from a calibration "
                                  "(run `vecrag calibrate`)", path=self.source)
            mw = float(calibration.get("margin_weight", 0.0))
            c, hit = confidence(calibration["samples"], mw)
            t = thresholds(c, hit, intent_of(prof, shift))
            d["tau_snap"], d["tau_novel"], d["margin_weight"] = t["tau_snap"], t["tau_novel"], mw
            d["pick"] = str(calibration.get("pick", "cos"))  # the thresholds hold for the rule they were measured with
            blend = calibration.get("blend") or {}
            if blend.get("alpha_points"):  # BLEND's partner and weights chosen on VAL (decode.calibration)
                d["alpha_points"] = [list(p) for p in blend["alpha_points"]]
                d["blend_tau"] = float(blend.get("tau", 0.0))
            else:       # an older calibration: the preset's shape moved onto the calibrated band
                lo = max(t["tau_novel"], float(np.quantile(c, 0.01))) if len(c) else t["tau_novel"]
                hi = min(t["tau_snap"], float(c.max())) if len(c) else t["tau_snap"]
                d["alpha_points"] = rescale_alpha(d.get("alpha_points", DEFAULT_ALPHA_POINTS), lo,
                                                  max(hi, lo + 1e-3), clip=mw == 0)
        try:
            return Policy(**d)
        except VecragError as e:
            raise VecragError(f"profile {profile!r}" + (f", lane {lane!r}" if lane else "") + f": {e}",
                              path=self.source) from e

    def policy_set(self, profile: str, lanes: Iterable[str] = (),
                   calibration: dict[str, Any] | None = None) -> PolicySet:
        """Policies for every lane in ``lanes`` (e.g. all the bank's lanes) plus the profile default."""
        default = self.policy(profile, calibration=calibration)
        by_lane = {ln: self.policy(profile, ln, calibration) for ln in set(lanes) | set(self.override_lanes) if ln}
        return PolicySet(profile, default, by_lane)


@dataclass(frozen=True)
class PolicySet:
    """A profile's policy per lane; ``for_lane`` never fails (unknown lanes get the profile default)."""

    profile: str
    default: Policy
    by_lane: dict[str, Policy]

    def for_lane(self, lane: str | None) -> Policy:
        return self.by_lane.get(lane or "", self.default)


def load_profiles(path: str | Path | None = None) -> Profiles:
    """Read decode presets from ``path`` (a YAML file) or the shipped ``presets/decode.yaml``."""
    if path is None:
        text = resources.files("vecrag.presets").joinpath(PRESET).read_text(encoding="utf-8")
        source: str | Path = f"vecrag/presets/{PRESET}"
    else:
        p = Path(path)
        if not p.is_file():
            raise VecragError("decode profile file not found", path=p,
                              hint="pass a YAML file shaped like vecrag/presets/decode.yaml")
        text, source = p.read_text(encoding="utf-8"), p
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise VecragError(f"decode profiles are not valid YAML ({e})", path=source) from e
    if not isinstance(raw, dict) or not isinstance(raw.get("profiles"), dict) or not raw["profiles"]:
        raise VecragError("decode profiles need a non-empty `profiles:` mapping", path=source)
    defaults = _check_keys(raw.get("defaults"), "defaults", source)
    profiles = {str(k): _check_keys(v, f"profiles.{k}", source, allow=("lanes",))
                for k, v in raw["profiles"].items()}
    for name, prof in profiles.items():
        lanes = prof.get("lanes") or {}
        if not isinstance(lanes, dict):
            raise VecragError(f"profiles.{name}.lanes must be a mapping lane -> overrides", path=source)
        prof["lanes"] = {str(ln): _check_keys(v, f"profiles.{name}.lanes.{ln}", source) for ln, v in lanes.items()}
    lanes = {str(k): _check_keys(v, f"lanes.{k}", source) for k, v in (raw.get("lanes") or {}).items()}
    out = Profiles(defaults, profiles, lanes, str(source))
    for name in out.names:  # validate every combination up front, so errors name the file
        prof = out.profiles[name]
        if out.is_calibrated(name):
            both = sorted(set(prof) & set(ABSOLUTE_KEYS))
            if both:
                raise VecragError(f"profiles.{name} states an intent ({', '.join(INTENT_KEYS)}) and absolute "
                                  f"thresholds ({', '.join(both)}): keep one", path=source)
            continue  # its thresholds exist only with a calibration
        out.policy(name)
        for ln in out.override_lanes:
            out.policy(name, ln)
    return out


def check_lane(lane: str, bank_lanes: Iterable[str] | None, profiles: Profiles) -> None:
    """Reject a lane the user asked for that the bank (or, without a bank, the presets) does not have."""
    if bank_lanes is not None:
        valid = sorted({ln for ln in bank_lanes if ln})
        if lane not in valid:
            hint = (f"this bank's lanes: {', '.join(valid)}" if valid else
                    "this bank has no lanes; omit --lane (or assign lanes with `vecrag bank lanes`)")
            raise VecragError(f"unknown lane {lane!r}", hint=hint)
    elif lane not in profiles.override_lanes:
        raise VecragError(f"unknown lane {lane!r}",
                          hint=f"lanes with overrides: {', '.join(profiles.override_lanes)}")


def resolve_policy(profile: str = "neutral", lane: str | None = None, *, bank_lanes: Iterable[str] | None = None,
                   path: str | Path | None = None, calibration: dict[str, Any] | None = None) -> Policy:
    """The policy for ``profile`` and an explicitly requested ``lane`` (validated as described above)."""
    profiles = load_profiles(path)
    profiles._profile(profile)
    if lane:
        check_lane(lane, bank_lanes, profiles)
    return profiles.policy(profile, lane, calibration)
