"""Format registry and detection: the file's name first (after any .xz/.gz/.bz2), then its content.

=============  ===========================================================  =============================
format         recognised by                                                 reader
=============  ===========================================================  =============================
jsonl          ``.jsonl`` ``.ndjson`` (``.json`` when lines are objects);     formats.jsonl.read_jsonl
               content starting with ``{``
wikitext       ``.tokens`` ``.raw``; content starting with `` = Title = ``   formats.wikitext.read_wikitext
wikiextractor  content starting with ``<doc ``                               formats.wikiextractor
mediawiki      ``.xml``; content starting with ``<mediawiki`` / ``<?xml``    formats.mediawiki
txt            ``.txt`` ``.md`` ``.markdown`` (one article per file)         formats.txt.read_txt
parquet        ``.parquet`` ``.pq``; magic ``PAR1``                          formats.parquet.read_parquet
hf             a source written ``hf:NAME[:CONFIG][:SPLIT]``                 formats.hf.read_hf
=============  ===========================================================  =============================

A forced format (``--format``) is checked against the content: a file that plainly is another format (a JSON
object line, ``<doc``, an XML header, Parquet magic, `` = Title = `` headings) is refused, naming that format.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

from vecrag.corpus.article import Article, ReadContext
from vecrag.corpus.formats.jsonl import read_jsonl
from vecrag.corpus.formats.mediawiki import read_mediawiki
from vecrag.corpus.formats.parquet import read_parquet
from vecrag.corpus.formats.txt import read_txt
from vecrag.corpus.formats.wikiextractor import read_wikiextractor
from vecrag.corpus.formats.wikitext import read_wikitext
from vecrag.corpus.textio import check_text_head, read_head, strip_compression_suffix
from vecrag.errors import VecragError

Reader = Callable[[Path, ReadContext], Iterator[Article]]

READERS: dict[str, Reader] = {
    "jsonl": read_jsonl,
    "wikitext": read_wikitext,
    "wikiextractor": read_wikiextractor,
    "mediawiki": read_mediawiki,
    "txt": read_txt,
    "parquet": read_parquet,
}
FORMATS = (*READERS, "hf")

_BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".tokens": "wikitext", ".raw": "wikitext",
              ".xml": "mediawiki", ".txt": "txt", ".md": "txt", ".markdown": "txt",
              ".parquet": "parquet", ".pq": "parquet"}
_SNIFF_FIRST = (".txt", ".json", "")  # names that could hide another format: look at the content
_WIKITEXT_HEAD = re.compile(r"^ = [^=].* = $")


def check_format(fmt: str) -> str:
    name = fmt.lower().strip()
    if name in ("md", "markdown", "text"):
        name = "txt"
    if name in ("xml", "wiki", "wikipedia"):
        name = "mediawiki"
    if name not in FORMATS:
        raise VecragError(f"unknown corpus format {fmt!r}.", hint=f"use one of: {', '.join(FORMATS)}.")
    return name


def sniff_format(head: bytes) -> str | None:
    """Guess a format from the first decompressed bytes, or None."""
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    stripped = text.lstrip()
    if stripped.startswith("<doc ") or stripped.startswith("<doc>"):
        return "wikiextractor"
    if stripped.startswith("<mediawiki") or stripped.startswith("<?xml"):
        return "mediawiki"
    if stripped.startswith("{"):
        return "jsonl"
    lines = text.split("\n")[:4]
    if any(_WIKITEXT_HEAD.match(ln) for ln in lines):
        return "wikitext"
    return None


_JSON_OBJECT_START = re.compile(r"^\{\s*(\"|\})")
_LOOKS_LIKE_WHY = {
    "jsonl": "its first line is a JSON object",
    "wikitext": "it has WikiText ' = Title = ' headings",
    "wikiextractor": "it starts with a WikiExtractor <doc> tag",
    "mediawiki": "it starts with an XML / <mediawiki> header",
    "parquet": "it has the Parquet magic bytes",
}


def content_format(head: bytes) -> str | None:
    """The format the content plainly is (``sniff_format``, with a JSONL guess only for a JSON object start)."""
    looks = sniff_format(head)
    if looks == "jsonl":
        first = head.decode("utf-8", errors="replace").lstrip("\ufeff").lstrip()
        if not _JSON_OBJECT_START.match(first):
            return None
    return looks


def check_forced_format(path: Path, forced: str) -> None:
    """Refuse a ``--format`` that the file's content contradicts (JSONL read as WikiText would become one
    untitled article of raw JSON), naming the format the file looks like."""
    looks = content_format(read_head(path))
    if looks is not None and looks != forced:
        raise VecragError(f"--format {forced} was given, but the file looks like {looks} "
                          f"({_LOOKS_LIKE_WHY[looks]}).", path=path,
                          hint=f"drop --format to detect the format, or pass --format {looks}.")


def detect_format(path: Path) -> str:
    """The format of one file (see the table above); raises VecragError for unreadable or unknown files."""
    name = strip_compression_suffix(path.name).lower()
    suffix = Path(name).suffix
    if suffix == ".parquet" or suffix == ".pq":
        return "parquet"
    head = read_head(path)
    if head.startswith(b"PAR1"):
        return "parquet"
    check_text_head(path, head)
    if suffix in _BY_SUFFIX and suffix not in _SNIFF_FIRST:
        return _BY_SUFFIX[suffix]
    sniffed = sniff_format(head)
    if sniffed is not None:
        return sniffed
    if suffix in (".txt",):
        return "txt"
    raise VecragError("cannot tell the corpus format from the file name or its first lines.", path=path,
                      hint=f"name it with --format ({', '.join(READERS)}), or give the file a known extension "
                           "(.jsonl, .tokens, .xml, .txt, .md, .parquet).")
