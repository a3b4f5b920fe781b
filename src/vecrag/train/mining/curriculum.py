"""Curriculum schedules for mined hard negatives, positive-aware filters and per-round mining statistics.

Schedule syntax (docs/design.md): ``0-5:none;6-10:8@0.82-0.92;11-30:16@0.84-0.96``. Each ``;``-separated
phase is ``FIRST-LAST:none`` or ``FIRST-LAST:N@LO-HI`` (or a single epoch ``E:...``). Ranges are
inclusive. Epochs count from **0** by default, matching the Trainer's epoch numbering (recommended);
``base=1`` reads the numbers as 1-based epochs (the string's epoch 1 is the Trainer's epoch 0). The
phases must start at the first epoch (``base``), be in order, and leave no gaps or overlaps; epochs after
the last phase keep the last phase. ``N`` mined negatives per sample are kept whose cosine to the QUERY
lies in ``[LO, HI]`` (both in [-1, 1], LO <= HI).

Positive-aware filters, applied after the masks (positive, duplicates, same-article window, context):
- ``rel``: drop a candidate with cos(query, cand) > ``rel`` x cos(query, positive) (NV-Retriever, 0.95);
- ``dup``: drop a candidate with cos(cand, positive) > ``dup`` (a near-duplicate of the positive, 0.98);
- ``band``: drop a candidate with cos(query, cand) outside [LO, HI].
Each removed candidate is counted under the first rule that removed it, in the order
mask, dup, rel, band.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from vecrag.errors import VecragError

_PHASE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*:\s*(.+?)\s*$")
_SPEC = re.compile(r"^(\d+)\s*@\s*(-?[0-9.]+)\s*-\s*(-?[0-9.]+)$")


@dataclass(frozen=True)
class Phase:
    first: int
    last: int
    n_neg: int
    lo: float
    hi: float


@dataclass(frozen=True)
class Curriculum:
    phases: tuple[Phase, ...]  # 0-based epochs; none-phases included with n_neg = 0
    text: str = ""

    @classmethod
    def parse(cls, text: str, *, base: int = 0) -> Curriculum:
        if base not in (0, 1):
            raise VecragError(f"curriculum base must be 0 or 1, got {base}")
        if text is None or not str(text).strip():
            return cls((), "")
        phases: list[Phase] = []
        for part in str(text).split(";"):
            if not part.strip():
                raise VecragError(f"empty phase in curriculum {text!r}", hint="separate phases with single ';'")
            m = _PHASE.match(part)
            if not m:
                raise VecragError(f"malformed phase {part.strip()!r} in curriculum {text!r}",
                                  hint="write FIRST-LAST:none or FIRST-LAST:N@LO-HI, e.g. 6-10:8@0.82-0.92")
            first = int(m.group(1))
            last = int(m.group(2)) if m.group(2) is not None else first
            spec = m.group(3)
            if last < first:
                raise VecragError(f"phase {part.strip()!r}: last epoch {last} is before first epoch {first}")
            if first < base:
                raise VecragError(f"phase {part.strip()!r}: epochs count from {base}")
            if spec.lower() == "none":
                n, lo, hi = 0, -1.0, 1.0
            else:
                s = _SPEC.match(spec)
                if not s:
                    raise VecragError(f"malformed negatives spec {spec!r} in phase {part.strip()!r}",
                                      hint="write N@LO-HI, e.g. 8@0.82-0.92, or none")
                n = int(s.group(1))
                try:
                    lo, hi = float(s.group(2)), float(s.group(3))
                except ValueError as e:
                    raise VecragError(f"bad band {spec!r} in phase {part.strip()!r}") from e
                if not (-1.0 <= lo <= 1.0 and -1.0 <= hi <= 1.0):
                    raise VecragError(f"band {lo}-{hi} in phase {part.strip()!r} is outside [-1, 1]",
                                      hint="cosine bands lie in [-1, 1]")
                if lo > hi:
                    raise VecragError(f"band {lo}-{hi} in phase {part.strip()!r} has lo > hi")
                if n < 1:
                    raise VecragError(f"phase {part.strip()!r} asks for {n} negatives", hint="use none instead")
            expected = base if not phases else phases[-1].last + 1 + base
            if first != expected:
                kind = "gap" if first > expected else "overlap"
                raise VecragError(f"{kind} in curriculum before phase {part.strip()!r}: expected it to start at "
                                  f"epoch {expected}", hint="phases must cover consecutive epochs with no gaps "
                                                            "or overlaps, starting at " + str(base))
            phases.append(Phase(first - base, last - base, n, lo, hi))
        return cls(tuple(phases), str(text))

    def phase_for(self, epoch: int) -> Phase | None:
        """The mining phase of a 0-based Trainer epoch, or None when it mines nothing."""
        if not self.phases:
            return None
        ph = next((p for p in self.phases if p.first <= epoch <= p.last), self.phases[-1])
        return ph if ph.n_neg > 0 else None

    @property
    def max_neg(self) -> int:
        return max((p.n_neg for p in self.phases), default=0)

    @property
    def mines(self) -> bool:
        return self.max_neg > 0


@dataclass
class FilterConfig:
    rel: float = field(default=0.95, metadata={"help": "drop cos(q, c) > rel * cos(q, pos); <= 0 disables"})
    dup: float = field(default=0.98, metadata={"help": "drop cos(c, pos) > dup; >= 1 disables"})
    keep_back: bool = field(default=False, metadata={"help": "the target article's chunks before the context skip "
                                                             "rel: known true negatives"})


RULES = ("mask", "dup", "rel", "band")


@dataclass
class MiningStats:
    """Accumulates one mining round (or several) and renders the table logged after it."""

    n_samples: int = 0
    n_short: int = 0
    n_candidates: int = 0
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULES, 0))
    pos_sum: float = 0.0
    pos_sq: float = 0.0
    neg_n: int = 0
    neg_sum: float = 0.0
    neg_sq: float = 0.0

    def merge(self, o: MiningStats) -> None:
        self.n_samples += o.n_samples
        self.n_short += o.n_short
        self.n_candidates += o.n_candidates
        for k in RULES:
            self.removed[k] += o.removed[k]
        self.pos_sum += o.pos_sum
        self.pos_sq += o.pos_sq
        self.neg_n += o.neg_n
        self.neg_sum += o.neg_sum
        self.neg_sq += o.neg_sq

    def summary(self) -> dict[str, float]:
        def ms(s: float, q: float, n: int) -> tuple[float, float]:
            if n == 0:
                return float("nan"), float("nan")
            m = s / n
            return m, float(np.sqrt(max(q / n - m * m, 0.0)))

        pm, ps = ms(self.pos_sum, self.pos_sq, self.n_samples)
        nm, ns = ms(self.neg_sum, self.neg_sq, self.neg_n)
        out = {"samples": float(self.n_samples), "pos_mean": pm, "pos_std": ps, "neg_mean": nm, "neg_std": ns,
               "pct_short": 100.0 * self.n_short / max(self.n_samples, 1)}
        for k in RULES:
            out[f"pct_removed_{k}"] = 100.0 * self.removed[k] / max(self.n_candidates, 1)
        return out

    def table(self) -> str:
        s = self.summary()
        rows = [("positive score (cos q,pos)", f"{s['pos_mean']:.4f} +- {s['pos_std']:.4f}"),
                ("negative score (cos q,neg)", f"{s['neg_mean']:.4f} +- {s['neg_std']:.4f}")]
        rows += [(f"% candidates removed by {k}", f"{s[f'pct_removed_{k}']:.2f}") for k in RULES]
        rows.append(("% samples lacking negatives", f"{s['pct_short']:.2f}"))
        w = max(len(r[0]) for r in rows)
        return "\n".join(f"{a.ljust(w)}  {b}" for a, b in rows)


def select_negatives(cand_ids, cand_q, cand_pos, pos_q, masked, phase: Phase, filt: FilterConfig,
                     back=None) -> tuple[np.ndarray, MiningStats]:
    """Apply masks, filters and the band to [B, K] candidates (sorted by cos to the query, best first).

    ``cand_q`` = cos(query, cand), ``cand_pos`` = cos(cand, positive), ``pos_q`` [B] = cos(query, positive),
    ``masked`` [B, K] True for masked candidates (and padding); ``back`` [B, K] (optional) True for chunks of the
    target's article before the sample's context, which ``filt.keep_back`` exempts from the ``rel`` filter: they
    outrank the target for half the same-article misses (docs/results.md) and, unlike a high-scoring chunk of
    another article, cannot be the continuation. numpy arrays or torch tensors; the work runs
    where the tensors are (the GPU miner's stay on the GPU) and ends in ONE copy to the host. Returns int64
    [B, n_neg] ids (-1 where a sample lacks enough negatives, which is counted) and the round's statistics.
    """
    B, K = cand_ids.shape
    packed = pack_selection(cand_ids, cand_q, cand_pos, pos_q, masked, phase, filt, back)
    return unpack_selection(packed.cpu().numpy(), B, K, phase.n_neg)


def pack_selection(cand_ids, cand_q, cand_pos, pos_q, masked, phase: Phase, filt: FilterConfig,
                   back=None):
    """:func:`select_negatives`' device work: a float64 tensor on the candidates' device holding the chosen ids
    (exact below 2**53), the removal counts and the score sums, for :func:`unpack_selection`. No host sync and
    fixed shapes for fixed inputs: the GPU miner captures it in a CUDA graph (:mod:`vecrag.train.mining.graph`)."""
    import torch

    def t(a):
        return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))

    cand_ids, cand_q, cand_pos, pos_q, masked = map(t, (cand_ids, cand_q, cand_pos, pos_q, masked))
    B, K = cand_ids.shape
    n_neg = phase.n_neg
    gone = masked | (cand_ids < 0)
    counts = [gone.sum()]
    rel = cand_q > filt.rel * pos_q[:, None] if filt.rel > 0 else None
    if rel is not None and filt.keep_back and back is not None:
        rel = rel & ~t(back)
    rules = [cand_pos > filt.dup if filt.dup < 1.0 else None,                # RULES[1:]: dup, rel, band
             rel,
             (cand_q < phase.lo) | (cand_q > phase.hi)]
    for hit in rules:
        new = hit & ~gone if hit is not None else torch.zeros_like(gone)
        counts.append(new.sum())
        gone |= new
    keep = ~gone
    rank = torch.cumsum(keep, dim=1)              # 1-based rank of each kept candidate in its row
    chosen = keep & (rank <= n_neg)               # the first n_neg kept candidates of each row
    # scatter the chosen ids to their slots; everything else lands in a spare column n_neg that is dropped
    slot = torch.where(chosen, rank - 1, torch.full_like(rank, n_neg))
    out = torch.full((B, n_neg + 1), -1, dtype=torch.int64, device=cand_ids.device)
    out.scatter_(1, slot, torch.where(chosen, cand_ids.long(), torch.full_like(cand_ids, -1, dtype=torch.int64)))
    n_chosen = chosen.sum(1)
    v, p = torch.where(chosen, cand_q.double(), 0.0), pos_q.double()  # (padding's -inf * 0 would be nan)
    counts += [(n_chosen < n_neg).sum(), n_chosen.sum()]
    return torch.cat([out[:, :n_neg].reshape(-1).double(), torch.stack(counts).double(),
                      torch.stack([v.sum(), (v * v).sum(), p.sum(), (p * p).sum()])])


def unpack_selection(packed: np.ndarray, B: int, K: int, n_neg: int) -> tuple[np.ndarray, MiningStats]:
    """(ids [B, n_neg], statistics) from :func:`pack_selection`'s tensor, copied to the host (``K``: candidates
    a sample)."""
    ids = packed[:B * n_neg].astype(np.int64).reshape(B, n_neg)
    return ids, stats_from_counts(packed[B * n_neg:], B, B * K)


def stats_from_counts(tail: np.ndarray, n_samples: int, n_candidates: int) -> MiningStats:
    """:class:`MiningStats` from the counts and sums after the ids in :func:`pack_selection`'s tensor (or those of
    several batches added up, as the graphed training step keeps them)."""
    n_counts = len(RULES) + 2
    c = np.asarray(tail[:n_counts]).astype(np.int64)
    neg_sum, neg_sq, pos_sum, pos_sq = np.asarray(tail[n_counts:]).tolist()
    st = MiningStats(n_samples=n_samples, n_candidates=n_candidates, n_short=int(c[-2]), neg_n=int(c[-1]),
                     neg_sum=neg_sum, neg_sq=neg_sq, pos_sum=pos_sum, pos_sq=pos_sq)
    st.removed = {name: int(x) for name, x in zip(RULES, c[:len(RULES)], strict=True)}
    return st
