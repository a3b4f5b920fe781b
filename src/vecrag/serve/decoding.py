"""The decoding stack behind /next and /generate, built from :mod:`vecrag.decode`.

Loaded once at startup: the LVM and tower predictors (trained runs or heuristics), the decode profiles, and
one :class:`vecrag.decode.generate.Decoder` per profile (created on first use). Every method here runs on
the server's single compute thread (:class:`vecrag.serve.state.Compute`), so the decoders' per-generation
state (recent ids for the near-duplicate rule, the fixed lane) is reset per request without races. The
cascade's own guard thread searches the index with a timeout; a failed, slow or empty search makes the step
NOVEL and is reported as a fallback (counted in /metrics).
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


class Decoding:
    def __init__(self, state: Any, lvm: Any, tower: Any, profiles: Any, *, default_profile: str = "neutral",
                 timeout_ms: float | None = 50.0):
        from vecrag.lanes import context_lane_classifier, lane_codes_of

        self.state, self.lvm, self.tower, self.profiles = state, lvm, tower, profiles
        self.default_profile = default_profile
        self.timeout_ms = timeout_ms
        codes, names = lane_codes_of(state.bank.lanes)
        self.bank_lanes = names
        self.lane_codes, self.lane_lut = codes, {n: i for i, n in enumerate(names)}
        # how a text context's lane is chosen (the rule `eval cascade` measures); built once, at start-up
        self.lane_classifier = context_lane_classifier(state.bank)[0]
        self._decoders: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        return {"lvm": self.lvm.name, "retriever": self.tower.name, "profiles": self.profiles.names,
                "default_profile": self.default_profile, "lanes": self.bank_lanes,
                "fallbacks": {p: d.fallbacks for p, d in self._decoders.items()}}

    # ---- validation (event loop; cheap) ----------------------------------------------------------------
    def check_request(self, profile: str | None, lane: str | None) -> None:
        from vecrag.decode.profiles import check_lane

        if profile is not None and profile not in self.profiles.names:
            raise HTTPException(422, f"unknown decode profile {profile!r}; choose one of "
                                     f"{', '.join(self.profiles.names)}")
        if lane is not None:
            try:
                check_lane(lane, self.bank_lanes, self.profiles)
            except VecragError as e:
                raise HTTPException(422, str(e).replace("\n  fix: ", "; ")) from None

    # ---- compute thread ---------------------------------------------------------------------------------
    def _decoder(self, profile: str, never_back: bool = False) -> Any:
        from vecrag.decode.cascade import CascadeConfig
        from vecrag.decode.generate import Decoder

        key = profile + ("+never_back" if never_back else "")
        if key not in self._decoders:
            policies = self.profiles.policy_set(profile, self.bank_lanes)
            cfg = CascadeConfig(K=policies.default.K, k=min(10, policies.default.K), timeout_ms=self.timeout_ms)
            bank = self.state.bank
            # as `vecrag generate` and `eval decode`: the context's own chunks are never snapped back to
            self._decoders[key] = Decoder(bank.vectors, bank.texts, bank.lanes, self.state.index, self.lvm,
                                          self.tower, policies, cfg, exclude_context=True,
                                          lane_classifier=self.lane_classifier, never_back=never_back,
                                          article_start=bank.article_start if never_back else None)
        return self._decoders[key]

    def _hit(self, i: int, score: float) -> dict[str, Any]:
        return self.state.hits(np.array([[score]], np.float32), np.array([[i]], np.int64))[0][0]

    def next(self, req: Any) -> dict[str, Any]:
        from vecrag.decode.generate import window
        from vecrag.decode.policy import decide, novel

        dec = self._decoder(req.profile or self.default_profile, req.never_back)
        bank = self.state.bank
        if req.context_ids is not None:
            ctx = list(bank.vectors_f32(np.asarray(req.context_ids, np.int64)))
            lane = req.lane if req.lane is not None else str(bank.lanes[req.context_ids[-1]] or "")
        else:
            ctx = list(self.state.encode(list(req.context_texts)))
            dec.fixed_lane = req.lane
            lane = dec.initial_lane(ctx)
        c_lvm, m_lvm = window(ctx, self.lvm.context_len, bank.dim)
        v_hat = self.lvm(c_lvm, m_lvm)
        c_tw, m_tw = window(ctx, self.tower.context_len, bank.dim)
        q = self.tower(c_tw, m_tw)
        policy = dec.policies.for_lane(lane)
        code = np.array([self.lane_lut.get(lane, -1)], np.int64)
        # the context's own chunks never come back as candidates (the decoder excludes them, as `vecrag generate`)
        res = dec.shortlist(q, v_hat, code, req.context_ids, K=policy.K, k=req.k)
        recent = [int(i) for i in (req.context_ids or [])][-policy.near_dup_window:]
        d = novel(v_hat[0], reason=res.reasons[0]) if res.reasons[0] else decide(
            v_hat[0], res.vectors[0], res.ids[0], policy, recent)
        cands = [self._hit(int(i), float(s)) for i, s in zip(res.ids[0], res.scores[0], strict=True)
                 if i >= 0][:req.k]
        chosen = self._hit(d.neighbour_id, d.c) if d.neighbour_id >= 0 else None
        return {"decision": d.kind, "c": _num(d.c), "lane": lane, "chosen": chosen, "candidates": cands,
                "fallback": d.fallback or None,
                "details": {"alpha": _num(d.alpha), "c_max": _num(d.c_max), "skipped_ids": list(d.skipped_ids),
                            "profile": req.profile or self.default_profile, "policy": policy.as_dict(),
                            "never_back": req.never_back,
                            "lvm": self.lvm.name, "retriever": self.tower.name, "timings_ms": res.timings_ms}}

    def generate(self, req: Any) -> dict[str, Any]:
        from vecrag.decode.common import split_prompt

        dec = self._decoder(req.profile or self.default_profile, req.never_back)
        chunks, how = split_prompt(self.state.bank, req.prompt)
        prompt = list(self.state.encode(chunks))
        dec.recent = []
        dec.fixed_lane = req.lane
        art = self.state.bank.article_of
        steps = []
        for st in dec.generate(prompt, req.steps):
            s = st.as_dict()
            s["title"] = self.state.titles.get(int(art[st.text_id]), "") if st.text_id >= 0 else ""
            steps.append(s)
        return {"prompt": req.prompt, "steps": steps,
                "details": {"prompt_chunks": len(chunks), "chunking": how,
                            "profile": req.profile or self.default_profile, "lvm": self.lvm.name,
                            "retriever": self.tower.name, "never_back": req.never_back}}

    def close(self) -> None:
        for d in self._decoders.values():
            d.close()


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
    lvm_p = parse_predictor(str(lvm or DEFAULT_LVM), "lvm", device=dev, bank=state.bank)
    tower_p = parse_predictor(str(retriever or DEFAULT_RETRIEVER), "retriever", device=dev, bank=state.bank)
    return Decoding(state, lvm_p, tower_p, load_profiles(profiles_path), timeout_ms=timeout_ms), None
