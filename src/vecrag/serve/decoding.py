"""The decoding stack behind /next and /generate, built from :mod:`vecrag.decode`.

Loaded once at startup: the LVM and tower predictors (trained runs or heuristics), the decode profiles, the
calibration of this (bank, LVM, retriever) when `vecrag calibrate` wrote one, and one
:class:`vecrag.decode.generate.Decoder` per profile (created on first use, with
:meth:`~vecrag.decode.generate.Decoder.for_bank`, as `vecrag generate` builds it). The calibrated profiles
(conservative, neutral, creative) need the calibration: without one the server's default profile is
``greedy`` and a request naming a calibrated profile gets a 422 that names the `vecrag calibrate` command.

Every method here runs on the server's single compute thread (:class:`vecrag.serve.state.Compute`), so the
decoders' per-generation state (shown chunks, the fixed lane) is reset per request without races. The
cascade's own guard thread searches the index with a timeout; a failed, slow or empty search makes the step
NOVEL and is reported as a fallback (counted in /metrics). A generation never shows a chunk twice nor a
prompt chunk (by text; also a bank chunk whose text the prompt contains, see ``Decoder.reset``), and
returns the prompt's chunks and the continuation as one readable passage (as `vecrag generate`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException

from vecrag.errors import VecragError

log = logging.getLogger(__name__)
DEFAULT_LVM = "heuristic:ewma"
DEFAULT_RETRIEVER = "heuristic:last"
CALIBRATED_DEFAULT = "neutral"  # the default profile with a calibration ...
UNCALIBRATED_DEFAULT = "greedy"  # ... and without one (needs none)


class Decoding:
    def __init__(self, state: Any, lvm: Any, tower: Any, profiles: Any, *, calibration: dict[str, Any] | None = None,
                 calibrate_command: str = "vecrag calibrate", default_profile: str | None = None,
                 timeout_ms: float | None = 50.0):
        from vecrag.bank.lanes import lane_codes_of

        self.state, self.lvm, self.tower, self.profiles = state, lvm, tower, profiles
        self.calibration, self.calibrate_command = calibration, calibrate_command
        self.default_profile = default_profile or default_profile_for(profiles, calibration)
        self.timeout_ms = timeout_ms
        codes, names = lane_codes_of(state.bank.lanes)
        self.bank_lanes = names
        self.lane_codes, self.lane_lut = codes, {n: i for i, n in enumerate(names)}
        self._decoders: dict[str, Any] = {}

    @property
    def available_profiles(self) -> list[str]:
        """The profiles a request may name: all of them with a calibration, else the absolute ones."""
        return [p for p in self.profiles.names if self.calibration is not None or not self.profiles.is_calibrated(p)]

    def describe(self) -> dict[str, Any]:
        return {"lvm": self.lvm.name, "retriever": self.tower.name, "profiles": self.profiles.names,
                "available_profiles": self.available_profiles, "default_profile": self.default_profile,
                "calibrated": self.calibration is not None,
                "calibration": (self.calibration or {}).get("path"),
                "calibrate_command": None if self.calibration is not None else self.calibrate_command,
                "lanes": self.bank_lanes, "fallbacks": {p: d.fallbacks for p, d in self._decoders.items()}}

    # ---- validation (event loop; cheap) ----------------------------------------------------------------
    def check_request(self, profile: str | None, lane: str | None) -> None:
        from vecrag.decode.profiles import check_lane

        if profile is not None and profile not in self.profiles.names:
            raise HTTPException(422, f"unknown decode profile {profile!r}; choose one of "
                                     f"{', '.join(self.available_profiles)}")
        if profile is not None and profile not in self.available_profiles:
            raise HTTPException(422, f"profile {profile!r} is calibrated: its thresholds come from a calibration of "
                                     f"this LVM and retriever on this bank, and this server has none; run "
                                     f"`{self.calibrate_command}` and restart the server, or choose one of "
                                     f"{', '.join(self.available_profiles)}")
        if lane is not None:
            try:
                check_lane(lane, self.bank_lanes, self.profiles)
            except VecragError as e:
                raise HTTPException(422, str(e).replace("\n  fix: ", "; ")) from None

    # ---- compute thread ---------------------------------------------------------------------------------
    def _decoder(self, profile: str, never_back: bool = False) -> Any:
        key = profile + ("+never_back" if never_back else "")
        if key not in self._decoders:
            self._decoders[key] = self._build(profile, never_back)
        return self._decoders[key]

    def _build(self, profile: str, never_back: bool) -> Any:
        """As `vecrag generate` builds it: the context's own chunks are never snapped back to, nothing repeats."""
        from vecrag.decode.calibration import calibrated_cascade, calibrated_feedback
        from vecrag.decode.generate import Decoder

        cal = self.calibration
        policies = self.profiles.policy_set(profile, self.bank_lanes, cal)
        K = policies.default.K
        cfg = calibrated_cascade(cal, K=K, k=min(10, K), timeout_ms=self.timeout_ms)
        return Decoder.for_bank(self.state.bank, self.state.index, self.lvm, self.tower, policies, cfg,
                                never_back=never_back, feedback=calibrated_feedback(cal))

    def _hit(self, i: int, score: float) -> dict[str, Any]:
        return self.state.hits(np.array([[score]], np.float32), np.array([[i]], np.int64))[0][0]

    def _title(self, text_id: int) -> str:
        return self.state.titles.get(int(self.state.bank.article_of[text_id]), "") if text_id >= 0 else ""

    def _context(self, dec: Any, req: Any) -> tuple[list[np.ndarray], str]:
        """The context vectors and the context lane of a /next request; starts the decoder's no-repeat state."""
        bank = self.state.bank
        dec.reset(req.context_ids, req.context_texts)
        if req.context_ids is not None:
            ctx = list(bank.vectors_f32(np.asarray(req.context_ids, np.int64)))
            return ctx, req.lane if req.lane is not None else str(bank.lanes[req.context_ids[-1]] or "")
        ctx = list(self.state.encode(list(req.context_texts)))
        dec.fixed_lane = req.lane
        return ctx, dec.initial_lane(ctx)

    def next(self, req: Any) -> dict[str, Any]:
        from vecrag.decode.generate import window
        from vecrag.decode.policy import decide, novel

        profile = req.profile or self.default_profile
        dec = self._decoder(profile, req.never_back)
        ctx, lane = self._context(dec, req)
        dim = self.state.bank.dim
        v_hat = self.lvm(*window(ctx, self.lvm.context_len, dim))
        q = self.tower(*window(ctx, self.tower.context_len, dim))
        policy = dec.policies.for_lane(lane)
        code = np.array([self.lane_lut.get(lane, -1)], np.int64)
        # the context's own chunks never come back as candidates (the decoder excludes them, as `vecrag generate`)
        res = dec.shortlist(q, v_hat, code, req.context_ids, K=policy.K, k=req.k, topic=_topic(ctx))
        recent = [int(i) for i in (req.context_ids or [])][-policy.near_dup_window:]
        d = novel(v_hat[0], reason=res.reasons[0]) if res.reasons[0] else decide(
            v_hat[0], res.vectors[0], res.ids[0], policy, recent, scores=res.scores[0])
        cands = [self._hit(int(i), float(s)) for i, s in zip(res.ids[0], res.scores[0], strict=True)
                 if i >= 0][:req.k]
        chosen = self._hit(d.neighbour_id, d.c) if d.neighbour_id >= 0 else None
        return {"decision": d.kind, "c": _num(d.c), "lane": lane, "chosen": chosen, "candidates": cands,
                "fallback": d.fallback or None,
                "details": {"alpha": _num(d.alpha), "c_max": _num(d.c_max), "skipped_ids": list(d.skipped_ids),
                            **self._details(profile, req.never_back), "policy": policy.as_dict(),
                            "timings_ms": res.timings_ms}}

    def generate(self, req: Any) -> dict[str, Any]:
        from vecrag.decode.generate import continuation
        from vecrag.decode.prompt import split_prompt

        profile = req.profile or self.default_profile
        dec = self._decoder(profile, req.never_back)
        chunks, how = split_prompt(self.state.bank, req.prompt)
        prompt = self.state.encode(chunks)
        dec.fixed_lane = req.lane
        # never shown: a prompt chunk, or a bank chunk whose text the prompt contains (the decoder checks)
        steps = [{**st.as_dict(), "title": self._title(st.text_id)}
                 for st in dec.generate(list(prompt), req.steps, prompt_texts=chunks)]
        return {"prompt": req.prompt, "prompt_chunks": chunks, "steps": steps, "continuation": continuation(steps),
                "details": {"chunking": how, **self._details(profile, req.never_back)}}

    def _details(self, profile: str, never_back: bool) -> dict[str, Any]:
        return {"profile": profile, "calibration": (self.calibration or {}).get("path"), "never_back": never_back,
                "lvm": self.lvm.name, "retriever": self.tower.name}

    def close(self) -> None:
        for d in self._decoders.values():
            d.close()


def default_profile_for(profiles: Any, calibration: dict[str, Any] | None) -> str:
    """``neutral`` with a calibration, ``greedy`` without; for a profiles file without them, its first usable one."""
    want = CALIBRATED_DEFAULT if calibration is not None else UNCALIBRATED_DEFAULT
    if want in profiles.names:
        return want
    usable = [p for p in profiles.names if calibration is not None or not profiles.is_calibrated(p)]
    return (usable or profiles.names)[0]


def _topic(ctx: list[np.ndarray]) -> np.ndarray:
    """The normalised mean of the context (the cascade's topic term, as :meth:`Decoder.step` computes it)."""
    m = np.mean(np.asarray(ctx, np.float32), axis=0)
    return (m / max(float(np.linalg.norm(m)), 1e-12))[None]


def _num(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def load_decoding(state: Any, *, lvm: str | Path | None, retriever: str | Path | None,
                  device: str = "auto", profiles_path: str | Path | None = None,
                  timeout_ms: float | None = 50.0) -> tuple[Decoding | None, str | None]:
    """(Decoding, None), or (None, why) when the decoder package is missing. Bad model runs raise."""
    try:
        from vecrag.decode.predictors import parse_predictor
        from vecrag.decode.profiles import load_profiles
    except ImportError as e:
        msg = f"the decoder (vecrag.decode) is not installed ({e})"
        log.warning("/next and /generate disabled: %s", msg)
        return None, msg
    from vecrag.runtime import pick_device

    dev = pick_device(device)
    lvm_spec, tower_spec = str(lvm or DEFAULT_LVM), str(retriever or DEFAULT_RETRIEVER)
    lvm_p = parse_predictor(lvm_spec, "lvm", device=dev, bank=state.bank)
    tower_p = parse_predictor(tower_spec, "retriever", device=dev, bank=state.bank)
    profiles = load_profiles(profiles_path)
    cal, command = _calibration(state.bank, lvm_spec, tower_spec)
    dec = Decoding(state, lvm_p, tower_p, profiles, calibration=cal, calibrate_command=command,
                   timeout_ms=timeout_ms)
    if cal is None:
        log.info("no decode calibration for lvm=%s retriever=%s: default profile %s; the calibrated profiles (%s) "
                 "need `%s`", lvm_spec, tower_spec, dec.default_profile,
                 ", ".join(p for p in profiles.names if profiles.is_calibrated(p)) or "none", command)
    else:
        log.info("decode calibration %s: default profile %s", cal.get("path"), dec.default_profile)
    return dec, None


def _calibration(bank: Any, lvm: str, retriever: str) -> tuple[dict[str, Any] | None, str]:
    """The calibration of (bank, lvm, retriever) or None, and the command that writes it. A calibration made for
    another bank or model pair raises (as in `vecrag generate`): the server does not start on a stale one."""
    from vecrag.decode.calibration import command_for, load_calibration

    return load_calibration(bank, lvm, retriever, required=False), command_for(bank, lvm, retriever)
