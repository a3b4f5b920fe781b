"""Bounds on every size a user types on the command line (nothing typed can take the machine's memory).

One rule per kind of size, the same in every command:

- below its minimum (``-k 0``, ``--steps -1``, a negative seed or sample count): an error;
- a result count or a context window beyond what the bank holds (``-k``/``--k``/``--K`` > the bank's chunks,
  ``--context`` > its longest article): clamped to it, with one ``vecrag: note:`` line on
  stderr. The results are the same as with the larger value (a bank cannot return more chunks than it has,
  and no sample has more context than its article);
- an amount of work the bank cannot give (``generate --steps`` beyond the chunks left to show, ``eval generate``
  prompt + steps beyond the longest article, ``eval lvm --horizon`` beyond what any article continues): an
  error that says the most the bank allows;
- sizes whose memory grows with the value whatever the bank: a documented cap (:data:`MAX_SHORTLIST`,
  :data:`MAX_GENERATE_STEPS`, :data:`MAX_CONTRAST_BATCH`), above which the command refuses; ``--threads`` above
  the machine's cores is clamped to them (more threads than cores only costs memory).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

from vecrag.errors import VecragError

MAX_SHORTLIST = 4096        # --K: [batch, K, D] candidate vectors are gathered per evaluation batch
MAX_GENERATE_STEPS = 10_000  # generate --steps: one record per step is kept (and printed)
MAX_CONTRAST_BATCH = 4096   # eval lvm --contrast-batch: a [b, b] score matrix and a [b, b, L] context mask
MAX_SEED = 2**32 - 1        # numpy's legacy seeding (generate --seed) takes 0 .. 2**32 - 1
MAX_TIMEOUT_MS = 3_600_000  # --timeout-ms: an hour (0 = no timeout); far larger waits overflow the thread wait


def note(message: str) -> None:
    """One line on stderr saying what was clamped (stdout stays the command's output, e.g. its JSON)."""
    print(f"vecrag: note: {message}", file=sys.stderr)


def at_least(flag: str, value: int | None, low: int, *, hint: str | None = None) -> None:
    """Refuse ``value < low`` (``None`` = not given: accepted)."""
    if value is not None and value < low:
        raise VecragError(f"{flag} must be >= {low}, got {value}", hint=hint)


def check_seed(flag: str, value: int | None) -> None:
    if value is not None and not 0 <= value <= MAX_SEED:
        raise VecragError(f"{flag} must be in 0..{MAX_SEED}, got {value}", hint=f"{flag} 0")


def check_finite(flag: str, value: float | None, *, low: float | None = None, high: float | None = None) -> None:
    """Refuse NaN / inf (and values outside ``low .. high``) for a float option; ``None`` = not given."""
    if value is None:
        return
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        bound = "".join(f" and {op} {b:g}" for op, b in ((">=", low), ("<=", high)) if b is not None)
        raise VecragError(f"{flag} must be a finite number{bound}, got {value}")


def longest_article(bank: Any) -> int:
    """Chunks in the bank's longest article (0 for an empty bank)."""
    counts = bank.articles.column("n_chunks").to_numpy()
    return int(counts.max()) if len(counts) else 0


def clamp_count(flag: str, value: int, bank: Any, *, what: str = "using", default: int | None = None) -> int:
    """A result count: at least 1; above the bank's chunk count it means every chunk (clamped, noted unless it is
    the option's ``default``)."""
    at_least(flag, value, 1)
    if value <= bank.n:
        return value
    if value != default:
        note(f"{flag} {value} is more than the bank's {bank.n} chunks: {what} {bank.n}")
    return int(bank.n)


def clamp_context(flag: str, value: int, bank: Any, *, default: int | None = None) -> int:
    """A context window: at least 1; above the longest article's chunk count it changes nothing (clamped, noted
    unless it is the option's ``default``)."""
    at_least(flag, value, 1)
    most = max(1, longest_article(bank))
    if value <= most:
        return value
    if value != default:
        note(f"{flag} {value} is longer than the bank's longest article ({most} chunks): using {most} "
             f"(the same results: no sample has more context)")
    return most


def check_shortlist(flag: str, value: int, bank: Any, *, default: int | None = None) -> int:
    """The tower shortlist ``K``: clamped to the bank, then at most :data:`MAX_SHORTLIST`."""
    value = clamp_count(flag, value, bank, default=default)
    if value > MAX_SHORTLIST:
        raise VecragError(f"{flag} {value} is above the shortlist cap of {MAX_SHORTLIST} (memory grows with "
                          f"{flag} x the vector dimension per query)", hint=f"{flag} 500 (the profiles' default)")
    return value


def check_threads(value: int | None) -> int | None:
    """``--threads``: at least 1; above the machine's cores clamped to them (noted)."""
    at_least("--threads", value, 1)
    cores = os.cpu_count() or 1
    if value is not None and value > cores:
        note(f"--threads {value} is more than this machine's {cores} cores: using {cores}")
        return cores
    return value
