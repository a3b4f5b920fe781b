"""Plain text and Markdown files: one article per file (a folder of them is read sorted by path).

Title: the file stem, or for Markdown the first ``# `` heading (which is then not text). Paragraphs: when
the file has blank lines, blank-line separated blocks (hard-wrapped lines inside a block are joined with a
space); otherwise every line is a paragraph. Markdown headings of any level are structure, not text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from vecrag.corpus.article import Article, ReadContext
from vecrag.corpus.textio import iter_lines, strip_compression_suffix

MD_SUFFIXES = (".md", ".markdown")
_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def read_txt(path: Path, ctx: ReadContext) -> Iterator[Article]:
    name = strip_compression_suffix(path.name)
    is_md = name.lower().endswith(MD_SUFFIXES)
    title = Path(name).stem
    lines = [line for _, line in iter_lines(path)]
    blocks: list[list[str]] = [[]]
    has_blank = any(not ln.strip() for ln in lines)
    found_title = False
    for ln in lines:
        m = _MD_HEADING.match(ln) if is_md else None
        if m:
            if m.group(1) == "#" and not found_title:
                title, found_title = m.group(2), True
            blocks.append([])
            continue
        if not ln.strip() or not has_blank:
            blocks.append([])
            if not ln.strip():
                continue
        blocks[-1].append(ln.strip())
    paras = [" ".join(b) for b in blocks if b]
    yield Article(title=title, text="\n".join(paras), source_id=str(path))
