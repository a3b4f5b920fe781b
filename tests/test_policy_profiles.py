"""Decode profiles, lane overrides and their validation (vecrag.decode.profiles)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vecrag.decode.policy import Policy
from vecrag.decode.profiles import load_profiles, resolve_policy
from vecrag.errors import VecragError


@pytest.mark.parametrize(("profile", "snap", "novel", "K"), [
    ("conservative", 0.94, 0.88, 500), ("neutral", 0.92, 0.85, 500), ("creative", 0.90, 0.82, 300),
    ("minilm", 0.92, 0.50, 500),
])
def test_shipped_profiles(profile: str, snap: float, novel: float, K: int) -> None:
    p = resolve_policy(profile)
    assert (p.tau_snap, p.tau_novel, p.K) == (snap, novel, K)
    assert p.alpha_points == Policy().alpha_points and p.near_dup == 0.98 and p.near_dup_window == 8


def test_lane_overrides_replace_thresholds_keep_profile_K() -> None:
    p = resolve_policy("creative", "legal")
    assert (p.tau_snap, p.tau_novel, p.K) == (0.94, 0.88, 300)
    p = resolve_policy("conservative", "creative")
    assert (p.tau_snap, p.tau_novel, p.K) == (0.90, 0.82, 500)


def test_bank_lane_without_override_uses_profile_defaults() -> None:
    p = resolve_policy("neutral", "science", bank_lanes=["science", "legal", ""])
    assert (p.tau_snap, p.tau_novel) == (0.92, 0.85)
    ps = load_profiles().policy_set("conservative", ["science", "legal"])
    assert ps.for_lane("science").tau_snap == 0.94 and ps.for_lane("legal").tau_novel == 0.88
    assert ps.for_lane("never-seen") == ps.default and ps.for_lane("") == ps.default


def test_unknown_profile_lists_valid_ones() -> None:
    with pytest.raises(VecragError, match="unknown decode profile 'bold'") as e:
        resolve_policy("bold")
    assert "conservative, creative, minilm, neutral" in str(e.value)


def test_requested_lane_missing_from_bank_is_an_error() -> None:
    with pytest.raises(VecragError, match="unknown lane 'legal'") as e:
        resolve_policy("neutral", "legal", bank_lanes=["science", "history"])
    assert "history, science" in str(e.value)
    with pytest.raises(VecragError, match="no lanes"):
        resolve_policy("neutral", "legal", bank_lanes=[""])
    with pytest.raises(VecragError, match="lanes with overrides: creative, legal"):
        resolve_policy("neutral", "sports")


def test_user_file_validation(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    f.write_text("profiles:\n  mine: {tau_snap: 0.8, tau_novel: 0.9}\n")
    with pytest.raises(VecragError, match="profile 'mine'.*tau_novel"):
        load_profiles(f)
    f.write_text("profiles:\n  mine: {tau_snapp: 0.8}\n")
    with pytest.raises(VecragError, match="unknown key"):
        load_profiles(f)
    f.write_text("profiles:\n  mine: {tau_snap: 0.95}\nlanes:\n  legal: {tau_novel: 0.99}\n")
    with pytest.raises(VecragError, match="lane 'legal'"):
        load_profiles(f)
    f.write_text("defaults: {K: 50}\nprofiles:\n  mine: {tau_snap: 0.95}\n")
    assert resolve_policy("mine", path=f) == Policy(tau_snap=0.95, K=50)
    with pytest.raises(VecragError, match="not found"):
        load_profiles(tmp_path / "missing.yaml")
