"""WikiText-103 / WikiText-2 token files (``.tokens``, ``.raw``, optionally xz/gz/bz2-compressed).

Article boundary (``../shared/DATA.md``): a line matching ``^ = [^=].* = $`` with a blank line before and
after it; the title is that heading, detokenised. Any other line that merely looks like a heading (the test
split has two formula lines ``" = 1 henry and capacitance C = "``) stays body text. Section headings
``" = = X = = "`` (any depth) are structure: they end a paragraph and are not text. Every other non-blank line
is one paragraph, detokenised by ``detokenize``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from vecrag.corpus.article import Article, ReadContext
from vecrag.corpus.textio import iter_lines

ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")
SECTION_HEADING = re.compile(r"^ (= ){2,}.*?( =){2,} ?$")

_AT = re.compile(r" @(\S)@ ")
_CONTRACTION = re.compile(r"(\w) (n't|'(?:s|re|ve|ll|d|m|t)|')(?=\s|$)", re.IGNORECASE)
_SPACE_BEFORE = re.compile(r" ([,.;:!?)\]}%])")
_SPACE_AFTER = re.compile(r"([(\[{$£€]) ")
_NUM_DASH = re.compile(r"(\d) ([–—]) (\d)")
_MULTI_SPACE = re.compile(r" {2,}")


def _fix_double_quotes(s: str) -> str:
    """Attach alternating " tokens: an opening quote to the next word, a closing one to the previous word."""
    parts = s.split(' " ')
    if len(parts) == 1 and not s.startswith('" ') and not s.endswith(' "'):
        return s
    toks = s.split(" ")
    out: list[str] = []
    opening = True
    for tok in toks:
        if tok == '"':
            if opening:
                out.append('"\x00')  # glue to the next token
            else:
                if out:
                    out[-1] = out[-1] + '"'
                else:
                    out.append('"')
            opening = not opening
        else:
            out.append(tok)
    return " ".join(out).replace('"\x00 ', '"').replace('"\x00', '"')


def detokenize(line: str) -> str:
    """Undo WikiText tokenisation on one line of body text.

    ``" @-@ "`` -> ``-``, ``" @,@ "`` -> ``,``, ``" @.@ "`` -> ``.`` (any ``" @X@ "``); no space before
    ``, . ; : ! ? ) ] } %`` or after ``( [ { $ £ €``; contractions and possessives glued (``Teddy 's`` ->
    ``Teddy's``, ``don 't``/``do n't`` -> ``don't``, ``players '`` -> ``players'``); double quotes paired
    (``" lobster red "`` -> ``"lobster red"``); ``5 – 6`` -> ``5–6`` between digits. ``<unk>`` is kept.
    """
    s = " " + line.strip() + " "
    s = _AT.sub(r"\1", s)
    s = _fix_double_quotes(s.strip())
    s = _CONTRACTION.sub(r"\1\2", s)
    s = _SPACE_BEFORE.sub(r"\1", s)
    s = _SPACE_AFTER.sub(r"\1", s)
    s = _NUM_DASH.sub(r"\1\2\3", s)
    return _MULTI_SPACE.sub(" ", s).strip()


def _with_neighbours(path: Path) -> Iterator[tuple[str, bool, bool]]:
    """(line, previous line blank or start, next line blank or end) for every line, streaming."""
    prev_blank = True
    cur: str | None = None
    for _, line in iter_lines(path):
        if cur is not None:
            yield cur, prev_blank, not line.strip()
            prev_blank = not cur.strip()
        cur = line
    if cur is not None:
        yield cur, prev_blank, True


def read_wikitext(path: Path, ctx: ReadContext) -> Iterator[Article]:
    title: str | None = None
    paras: list[str] = []
    n = 0

    def flush() -> Article | None:
        nonlocal n
        if title is None and not paras:
            return None
        n += 1
        return Article(title=title or "", text="\n".join(paras), source_id=f"{path.name}#{n}")

    for line, prev_blank, next_blank in _with_neighbours(path):
        if not line.strip():
            continue
        if prev_blank and next_blank and ARTICLE_HEADING.match(line):
            art = flush()
            if art is not None:
                yield art
            title, paras = detokenize(line.strip()[1:-1]), []
            continue
        if SECTION_HEADING.match(line):
            continue
        para = detokenize(line)
        if para:
            paras.append(para)
    art = flush()
    if art is not None:
        yield art
