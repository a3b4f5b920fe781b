"""The rollout baselines a decoding profile is measured against, each a Decoder on the same bank and index."""

from __future__ import annotations

from typing import Any

from vecrag.decode.cascade import CascadeConfig


def baseline_generators(bank: Any, index: Any, lvm: Any, tower: Any) -> dict[str, Any]:
    """The rollout baselines, each a Decoder on the same bank and index: greedy retrieval-only generators (the
    ewma heuristic, and the tower, as the query; always SNAP to the best chunk not yet used) and the LVM alone
    (NOVEL every step, its own prediction fed back)."""
    from vecrag.decode.generate import Decoder
    from vecrag.decode.policy import NOVEL, SNAP, Policy
    from vecrag.decode.profiles import PolicySet
    from vecrag.scoring.predictors import HeuristicPredictor

    def always(kind: str) -> PolicySet:
        return PolicySet(kind, Policy(force=kind), {})

    greedy_cfg = CascadeConfig(K=500, k=1, w_tower=1.0, w_lvm=0.0, lane_lambda=0.0, timeout_ms=None)
    ewma = HeuristicPredictor("ewma", 0.5, context_len=tower.context_len)
    out = {"greedy: ewma query": Decoder.for_bank(bank, index, ewma, ewma, always(SNAP), greedy_cfg,
                                                  lane="", feedback="shown")}
    if tower.name != ewma.name:
        out[f"greedy: {tower.name}"] = Decoder.for_bank(bank, index, tower, tower, always(SNAP), greedy_cfg,
                                                        lane="", feedback="shown")
    out[f"LVM alone ({lvm.name})"] = Decoder.for_bank(
        bank, index, lvm, tower, always(NOVEL),
        CascadeConfig(K=500, k=10, w_tower=1.0, w_lvm=0.0, lane_lambda=0.0, timeout_ms=None), lane="",
        feedback="emitted")
    return out
