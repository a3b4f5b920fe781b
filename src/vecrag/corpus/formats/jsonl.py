"""JSONL corpora: one JSON object per line with ``title``, ``text``, optional ``lane`` and ``id``.

Plain or compressed (``.jsonl``, ``.jsonl.xz``, ``.jsonl.gz``, ``.jsonl.bz2``; compression is read from the
magic bytes). Streams line by line. Blank lines are ignored. A line that is not a JSON object, or whose
``text`` is missing or not a string, is a bad record: fatal with its line number by default, skipped and
counted with ``on_error="skip"``. A missing ``title`` becomes "" (the article is still read).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from vecrag.corpus.article import Article, ReadContext
from vecrag.corpus.textio import iter_lines

_HINT = "fix or remove that line (each line must be an object such as {\"title\": ..., \"text\": ...})."


def read_jsonl(path: Path, ctx: ReadContext) -> Iterator[Article]:
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            ctx.bad_record(path, lineno, f"not valid JSON ({e.msg} at column {e.colno}).", _HINT)
            continue
        if not isinstance(obj, dict):
            ctx.bad_record(path, lineno, f"a JSON {type(obj).__name__}, not an object.", _HINT)
            continue
        text = obj.get("text")
        if not isinstance(text, str):
            what = "has no \"text\" field" if text is None else f"has a non-string \"text\" ({type(text).__name__})"
            ctx.bad_record(path, lineno, f"the object {what}; keys: {sorted(obj)[:8]}.", _HINT)
            continue
        title = obj.get("title")
        lane = obj.get("lane")
        aid = obj.get("id")
        yield Article(title=str(title) if title is not None else "", text=text,
                      lane=str(lane) if lane is not None else "",
                      source_id=str(aid) if aid is not None else f"{path.name}#{lineno}")
