"""WikiExtractor output: ``<doc id="..." url="..." title="...">`` ... ``</doc>`` blocks (plain text mode).

The files are usually ``AA/wiki_00`` without an extension (found by content sniffing), optionally
bz2/gz/xz-compressed. The first body line repeats the title and is dropped; blank lines separate
paragraphs (WikiExtractor writes one paragraph per line). WikiExtractor's ``--json`` output is JSONL.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

from vecrag.corpus.article import Article, ReadContext
from vecrag.corpus.textio import iter_lines

DOC_OPEN = re.compile(r"^<doc\b([^>]*)>\s*$")
_ATTR = re.compile(r'(\w+)="([^"]*)"')


def read_wikiextractor(path: Path, ctx: ReadContext) -> Iterator[Article]:
    attrs: dict[str, str] | None = None
    body: list[str] = []
    start = 0
    for lineno, line in iter_lines(path):
        m = DOC_OPEN.match(line)
        if m:
            if attrs is not None:
                ctx.bad_record(path, start, "a <doc> block is not closed before the next one opens.",
                               "check that the file is complete WikiExtractor output.")
            attrs = {k: html.unescape(v) for k, v in _ATTR.findall(m.group(1))}
            body, start = [], lineno
            continue
        if line.strip() == "</doc>":
            if attrs is None:
                ctx.bad_record(path, lineno, "</doc> without a matching <doc ...> line.",
                               "check that the file is complete WikiExtractor output.")
                continue
            yield _article(attrs, body)
            attrs = None
            continue
        if attrs is not None:
            body.append(line)
    if attrs is not None:
        ctx.bad_record(path, start, "the last <doc> block is not closed (file truncated?).",
                       "re-run WikiExtractor or remove the partial block.")


def _article(attrs: dict[str, str], body: list[str]) -> Article:
    title = attrs.get("title", "").strip()
    lines = [ln.strip() for ln in body]
    while lines and not lines[0]:
        lines.pop(0)
    if lines and title and lines[0].rstrip(".") == title.rstrip("."):
        lines.pop(0)
    paras = [ln for ln in lines if ln]
    return Article(title=title, text="\n".join(paras), source_id=attrs.get("id", ""))
