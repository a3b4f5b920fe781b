"""Decode profiles, lane overrides and their validation (vecrag.decode.profiles)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vecrag.decode.policy import NOVEL, SNAP, Policy, classify
from vecrag.decode.profiles import load_profiles, resolve_policy
from vecrag.errors import VecragError

CALIBRATED = ("conservative", "neutral", "creative")


def hand_calibration() -> dict:
    """24 VAL steps with c = 0.99, 0.98, ..., 0.76; only the 5 most confident were the true next chunk, so the
    precision of snapping at the m-th highest c is 5/m (m >= 5): p -> the largest m with 5/m >= p."""
    c = np.round(0.99 - 0.01 * np.arange(24), 2)
    return {"samples": {"c": c.tolist(), "hit": [True] * 5 + [False] * 19}}


# (profile, lane) -> (tau_snap, tau_novel) for hand_calibration(); intent p -> tau_snap = c of the m-th step with
# m = floor(5 / p); novel share s -> tau_novel = the s-quantile of c (linear: 0.76 + 0.23 * s), -1 for s <= 0
CALIBRATED_TAUS = {
    ("conservative", None): (0.80, -1.0),         # p 0.25 -> m 20; s 0
    ("conservative", "legal"): (0.76, -1.0),      # p 0.15 -> m 33 > 24: every step; s -0.05 -> 0
    ("conservative", "creative"): (0.86, 0.783),  # p 0.35 -> m 14; s 0.1
    ("neutral", None): (0.88, 0.7715),            # p 0.4 -> m 12; s 0.05
    ("neutral", "legal"): (0.84, -1.0),           # p 0.3 -> m 16; s 0
    ("neutral", "creative"): (0.90, 0.7945),      # p 0.5 -> m 10; s 0.15
    ("creative", None): (0.92, 0.829),            # p 0.6 -> m 8; s 0.3
    ("creative", "legal"): (0.90, 0.8175),        # p 0.5 -> m 10; s 0.25
    ("creative", "creative"): (0.93, 0.852),      # p 0.7 -> m 7; s 0.4
}


@pytest.mark.parametrize(("profile", "lane", "snap", "novel", "K"), [
    ("gtr-t5", None, 0.92, 0.85, 500), ("gtr-t5", "legal", 0.94, 0.88, 500),
    ("gtr-t5", "creative", 0.90, 0.82, 500),
])
def test_shipped_absolute_profile_and_its_lanes(profile: str, lane: str | None, snap: float, novel: float,
                                                K: int) -> None:
    p = resolve_policy(profile, lane)
    assert (p.tau_snap, p.tau_novel, p.K, p.force) == (snap, novel, K, "")
    assert p.alpha_points == Policy().alpha_points and p.near_dup == 0.98 and p.near_dup_window == 8
    assert resolve_policy(profile, lane, calibration=hand_calibration()) == p  # absolute: a calibration is unused


def test_greedy_profile_always_snaps() -> None:
    p = resolve_policy("greedy")
    assert (p.force, p.K) == (SNAP, 500) and not load_profiles().is_calibrated("greedy")
    assert classify(-0.5, p) == SNAP and classify(0.99, p) == SNAP and classify(float("nan"), p) == NOVEL
    assert resolve_policy("greedy", "legal").force == SNAP  # lanes never turn it into a banded profile


@pytest.mark.parametrize("profile", CALIBRATED)
def test_calibrated_profile_without_calibration_is_an_error(profile: str) -> None:
    profiles = load_profiles()
    assert profiles.is_calibrated(profile)
    with pytest.raises(VecragError, match=f"profile '{profile}' is calibrated") as e:
        resolve_policy(profile)
    assert "vecrag calibrate" in str(e.value)
    with pytest.raises(VecragError, match="vecrag calibrate"):
        resolve_policy(profile, "legal")
    with pytest.raises(VecragError, match="vecrag calibrate"):
        profiles.policy_set(profile, ["science", "legal"])


@pytest.mark.parametrize(("profile", "lane"), list(CALIBRATED_TAUS))
def test_calibrated_thresholds_from_a_hand_made_calibration(profile: str, lane: str | None) -> None:
    p = resolve_policy(profile, lane, calibration=hand_calibration())
    snap, novel = CALIBRATED_TAUS[(profile, lane)]
    assert p.tau_snap == pytest.approx(snap, abs=1e-9) and p.tau_novel == pytest.approx(novel, abs=1e-6)
    assert p.K == (300 if profile == "creative" else 500) and p.force == ""  # K stays the profile's under lanes
    # the alpha knots keep their weights, moved onto the calibrated band (first knot above tau_novel)
    assert [w for _, w in p.alpha_points] == [0.3, 0.7, 0.9] and p.tau_novel < p.alpha_points[0][0]
    if (profile, lane) == ("neutral", None):  # band [0.7715, 0.88] for the knots written for [0.85, 0.92]
        np.testing.assert_allclose([x for x, _ in p.alpha_points], [0.787, 0.8645, 0.9265], atol=1e-9)


def test_calibrated_thresholds_follow_the_intent() -> None:
    """conservative grounds more than neutral, neutral more than creative, under every lane; the legal lane
    grounds more than its profile, the creative lane less."""
    ps = {pr: load_profiles().policy_set(pr, ["legal", "creative", "science"], hand_calibration())
          for pr in CALIBRATED}
    for lane in ("", "legal", "creative", "science"):
        snaps = [ps[pr].for_lane(lane).tau_snap for pr in CALIBRATED]
        novels = [ps[pr].for_lane(lane).tau_novel for pr in CALIBRATED]
        assert snaps == sorted(snaps) and novels == sorted(novels) and snaps[0] < snaps[2], lane
    for pr in CALIBRATED:
        base, legal, creative = (ps[pr].for_lane(ln) for ln in ("", "legal", "creative"))
        assert legal.tau_snap < base.tau_snap < creative.tau_snap
        assert legal.tau_novel <= base.tau_novel < creative.tau_novel
        assert ps[pr].for_lane("science") == base  # a bank lane without an override: the profile's policy
    # on the calibration's own steps: the SNAP share falls and the NOVEL share grows from conservative to creative
    c = np.asarray(hand_calibration()["samples"]["c"])
    kinds = {pr: classify(c, ps[pr].default) for pr in CALIBRATED}
    assert [int((kinds[pr] == SNAP).sum()) for pr in CALIBRATED] == [20, 12, 8]
    assert [int((kinds[pr] == NOVEL).sum()) for pr in CALIBRATED] == [0, 2, 7]


def test_calibration_that_never_reaches_the_precision_never_snaps() -> None:
    cal = {"samples": {"c": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], "hit": [False] * 6}}
    p = resolve_policy("neutral", calibration=cal)
    assert p.tau_snap == 1.0 and classify(0.99, p) != SNAP
    assert p.tau_novel == pytest.approx(np.quantile(cal["samples"]["c"], 0.05))


def test_lane_overrides_replace_thresholds_keep_profile_K(tmp_path: Path) -> None:
    p = resolve_policy("gtr-t5", "legal")
    assert (p.tau_snap, p.tau_novel, p.K) == (0.94, 0.88, 500)
    p = resolve_policy("gtr-t5", "creative")
    assert (p.tau_snap, p.tau_novel, p.K) == (0.90, 0.82, 500)
    f = tmp_path / "d.yaml"  # an absolute profile with its own K: a lane override replaces tau only
    f.write_text("profiles:\n  mine: {tau_snap: 0.9, tau_novel: 0.8, K: 300}\n"
                 "lanes:\n  legal: {tau_snap: 0.95, tau_novel: 0.88, snap_precision: -0.1}\n")
    p = resolve_policy("mine", "legal", path=f)
    assert (p.tau_snap, p.tau_novel, p.K) == (0.95, 0.88, 300)
    # a calibrated profile ignores a lane's absolute thresholds and takes its intent shift
    f.write_text("profiles:\n  mine: {snap_precision: 0.4, novel_share: 0.05, K: 300}\n"
                 "lanes:\n  legal: {tau_snap: 0.99, tau_novel: 0.98, snap_precision: -0.1, novel_share: -0.05}\n")
    p = resolve_policy("mine", "legal", path=f, calibration=hand_calibration())
    assert (p.tau_snap, p.tau_novel, p.K) == (pytest.approx(0.84), -1.0, 300)


def test_bank_lane_without_override_uses_profile_defaults() -> None:
    p = resolve_policy("gtr-t5", "science", bank_lanes=["science", "legal", ""])
    assert (p.tau_snap, p.tau_novel) == (0.92, 0.85)
    ps = load_profiles().policy_set("gtr-t5", ["science", "legal"])
    assert ps.for_lane("science").tau_snap == 0.92 and ps.for_lane("legal").tau_novel == 0.88
    assert ps.for_lane("never-seen") == ps.default and ps.for_lane("") == ps.default
    p = resolve_policy("neutral", "science", bank_lanes=["science", "legal", ""], calibration=hand_calibration())
    assert (p.tau_snap, p.tau_novel) == (pytest.approx(0.88), pytest.approx(0.7715))


def test_unknown_profile_lists_valid_ones() -> None:
    with pytest.raises(VecragError, match="unknown decode profile 'bold'") as e:
        resolve_policy("bold")
    assert "conservative, creative, greedy, gtr-t5, neutral" in str(e.value)
    with pytest.raises(VecragError, match="unknown decode profile 'minilm'"):
        resolve_policy("minilm")


def test_requested_lane_missing_from_bank_is_an_error() -> None:
    with pytest.raises(VecragError, match="unknown lane 'legal'") as e:
        resolve_policy("neutral", "legal", bank_lanes=["science", "history"])
    assert "history, science" in str(e.value)
    with pytest.raises(VecragError, match="no lanes"):
        resolve_policy("neutral", "legal", bank_lanes=[""])
    with pytest.raises(VecragError, match="lanes with overrides: creative, legal"):
        resolve_policy("neutral", "sports")


@pytest.mark.parametrize("text,message", [
    ("profiles:\n  mine: {tau_snap: 0.8, tau_novel: 0.9}\n", "profile 'mine'.*tau_novel"),
    ("profiles:\n  mine: {tau_snapp: 0.8}\n", "unknown key"),
    ("profiles:\n  mine: {tau_snap: 0.95}\nlanes:\n  legal: {tau_novel: 0.99}\n", "lane 'legal'"),
    ("profiles:\n  mine: {snap_precision: 0.4, tau_snap: 0.95}\n", "states an intent .* and absolute thresholds"),
    ("profiles:\n  mine: {snap_precision: 1.5}\n", r"snap_precision must be a number in \[-1, 1\]"),
    ("profiles:\n  mine: {tau_snap: 0.95, force: GREEDY}\n", "force must be"),
])
def test_user_file_validation(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "d.yaml"
    f.write_text(text)
    with pytest.raises(VecragError, match=message):
        load_profiles(f)


def test_user_file_defaults_and_a_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    f.write_text("defaults: {K: 50}\nprofiles:\n  mine: {tau_snap: 0.95}\n")
    assert resolve_policy("mine", path=f) == Policy(tau_snap=0.95, K=50)
    with pytest.raises(VecragError, match="not found"):
        load_profiles(tmp_path / "missing.yaml")
