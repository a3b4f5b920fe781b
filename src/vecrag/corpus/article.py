"""The article record every reader yields, and the per-read context (error policy and counters)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vecrag.errors import VecragError

ON_ERROR = ("raise", "skip")
STAT_KEYS = ("files", "articles_read", "empty_skipped", "bad_lines", "pages_skipped")


@dataclass
class Article:
    """One article of a corpus.

    ``text`` holds the article's paragraphs separated by ``"\\n"`` (no title line, no headings).
    ``lane`` comes from corpus metadata when the format has it (else ""). ``source_id`` is the id the
    source gives the article (JSONL/Parquet ``id``, page id, ``<doc id>``), or a stable locator
    (``file#n`` for WikiText, the relative path for a text file).
    """

    title: str
    text: str
    lane: str = ""
    source_id: str = ""


@dataclass
class ReadContext:
    """What readers share: the bad-record policy and the counters the caller reads back.

    ``on_error="raise"`` (default): a bad record (a JSONL line that is not JSON or lacks ``text``) stops the
    read with a VecragError naming the file and line. ``on_error="skip"``: the record is skipped and counted
    in ``stats["bad_lines"]`` (the first 20 reasons are kept in ``errors``).
    """

    on_error: str = "raise"
    stats: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise VecragError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}.")
        for k in STAT_KEYS:
            self.stats.setdefault(k, 0)

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def bad_record(self, path: Path | str, lineno: int | None, message: str, hint: str) -> None:
        """Raise (policy "raise") or count and remember (policy "skip") one bad record."""
        where = f"line {lineno}: " if lineno is not None else ""
        if self.on_error == "raise":
            raise VecragError(f"{where}{message}", path=path,
                              hint=f"{hint} Or skip bad records and count them with on_error='skip' "
                                   "(ingest --skip-bad-lines).")
        self.count("bad_lines")
        if len(self.errors) < 20:
            self.errors.append(f"{path}: {where}{message}")
