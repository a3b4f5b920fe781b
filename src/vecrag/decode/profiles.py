"""Decode profiles and per-lane overrides (``presets/decode.yaml`` or a user file).

Resolution for ``(profile, lane)``: ``defaults`` <- ``profiles[profile]`` <- ``lanes[lane]`` <-
``profiles[profile]["lanes"][lane]``; each layer replaces only the keys it names. So with the shipped
presets the ``legal`` lane snaps at 0.94 / novel at 0.88 under every profile, and keeps the profile's K.

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

import yaml

from vecrag.decode.policy import Policy
from vecrag.errors import VecragError

PRESET = "decode.yaml"
POLICY_KEYS = ("tau_snap", "tau_novel", "alpha_points", "near_dup", "near_dup_window", "K")


def _check_keys(d: Any, where: str, path: str | Path, allow: tuple[str, ...] = ()) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise VecragError(f"{where} must be a mapping of policy keys, got {type(d).__name__}", path=path)
    bad = sorted(set(d) - set(POLICY_KEYS) - set(allow))
    if bad:
        raise VecragError(f"{where}: unknown key(s) {', '.join(map(str, bad))}", path=path,
                          hint=f"valid keys: {', '.join(POLICY_KEYS + allow)}")
    return dict(d)


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

    def policy(self, profile: str, lane: str | None = None) -> Policy:
        """The policy for a profile and (optionally) a lane; unlisted lanes get the profile's values."""
        prof = self._profile(profile)
        d = {**self.defaults, **{k: v for k, v in prof.items() if k != "lanes"}}
        if lane:
            d.update(self.lanes.get(lane, {}))
            d.update((prof.get("lanes") or {}).get(lane, {}))
        try:
            return Policy(**d)
        except VecragError as e:
            raise VecragError(f"profile {profile!r}" + (f", lane {lane!r}" if lane else "") + f": {e}",
                              path=self.source) from e

    def policy_set(self, profile: str, lanes: Iterable[str] = ()) -> PolicySet:
        """Policies for every lane in ``lanes`` (e.g. all the bank's lanes) plus the profile default."""
        default = self.policy(profile)
        by_lane = {ln: self.policy(profile, ln) for ln in set(lanes) | set(self.override_lanes) if ln}
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
                   path: str | Path | None = None) -> Policy:
    """The policy for ``profile`` and an explicitly requested ``lane`` (validated as described above)."""
    profiles = load_profiles(path)
    profiles._profile(profile)
    if lane:
        check_lane(lane, bank_lanes, profiles)
    return profiles.policy(profile, lane)
