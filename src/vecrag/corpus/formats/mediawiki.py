"""MediaWiki XML dumps (``pages-articles.xml``, ``.xml.bz2``/``.gz``/``.xz``), streamed with ``iterparse``.

Namespace-agnostic (any ``export-0.x`` schema). Only main-namespace pages (``<ns>0</ns>``) that are not
redirects are articles; the others are counted in ``stats["pages_skipped"]``. The newest ``<revision>``'s
text is parsed with mwparserfromhell: templates, ``<ref>``s, tables, galleries, comments, file/image and
category links are dropped; ``<math>`` becomes ``formula_0`` (cleaned like the enwiki corpus); headings
and list items become paragraph breaks; links keep their visible text. Paragraphs are blank-line separated
blocks of the source.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from vecrag.corpus.article import Article, ReadContext
from vecrag.corpus.textio import check_text_head, corrupt_error, open_bytes, read_head
from vecrag.errors import VecragError

DROP_TAGS = {"ref", "references", "table", "gallery", "timeline", "imagemap", "score", "graph", "mapframe",
             "templatedata", "syntaxhighlight", "source", "noinclude", "indicator", "categorytree"}
DROP_LINK_PREFIXES = ("file:", "image:", "category:", "media:", "wikipedia:", "wp:", "help:", "template:",
                      "portal:", "special:", "user:", "talk:")
_INTERWIKI = re.compile(r"^:?[a-z]{2,3}(-[a-z]+)?:")
_LIST_LINE = re.compile(r"^[*#:;]+\s*")
_SPACES = re.compile(r"[ \t\u00a0]+")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _render(code) -> str:  # code: mwparserfromhell Wikicode
    from mwparserfromhell import nodes

    out: list[str] = []
    for node in code.nodes:
        if isinstance(node, nodes.Text):
            out.append(str(node))
        elif isinstance(node, nodes.Wikilink):
            target = str(node.title).strip()
            low = target.lower()
            if low.startswith(DROP_LINK_PREFIXES) or (_INTERWIKI.match(low) and node.text is None):
                continue
            out.append(_render(node.text) if node.text is not None else target.split("#")[0])
        elif isinstance(node, nodes.ExternalLink):
            if node.title is not None:
                out.append(_render(node.title))
        elif isinstance(node, nodes.Tag):
            tag = str(node.tag).strip().lower()
            if tag in DROP_TAGS or (node.wiki_markup and str(node.wiki_markup).startswith("{|")):
                continue
            if tag == "math":
                out.append(" formula_0 ")
            elif tag in ("br", "hr"):
                out.append(" ")
            elif tag == "li" or tag == "p":
                out.append("\n\n" + (_render(node.contents) if node.contents is not None else "") + "\n\n")
            elif node.contents is not None:
                out.append(_render(node.contents))
        elif isinstance(node, nodes.Heading):
            out.append("\n\n")
        elif isinstance(node, nodes.HTMLEntity):
            out.append(node.normalize())
        # Template, Comment, Argument: dropped
    return "".join(out)


def wikitext_to_paragraphs(wikitext: str) -> list[str]:
    """Strip MediaWiki markup and return the prose paragraphs."""
    import mwparserfromhell

    text = _render(mwparserfromhell.parse(wikitext))
    paras: list[str] = []
    block: list[str] = []
    for raw in text.split("\n"):
        line = raw.strip()
        is_item = bool(_LIST_LINE.match(line))
        if not line or is_item:
            if block:
                paras.append(" ".join(block))
                block = []
            if is_item:
                item = _LIST_LINE.sub("", line).strip()
                if item:
                    paras.append(item)
            continue
        block.append(line)
    if block:
        paras.append(" ".join(block))
    return [p for p in (_SPACES.sub(" ", p).strip() for p in paras) if p]


def read_mediawiki(path: Path, ctx: ReadContext) -> Iterator[Article]:
    check_text_head(path, read_head(path))
    try:
        with open_bytes(path) as f:
            for _event, elem in ET.iterparse(f, events=("end",)):
                if _local(elem.tag) != "page":
                    continue
                art = _page(elem, ctx)
                elem.clear()
                if art is not None:
                    yield art
    except ET.ParseError as e:
        raise VecragError(f"the XML is malformed ({e}).", path=path,
                          hint="check that the dump is complete (a truncated download ends mid-page); "
                               "the pages before the error were read.") from e
    except (OSError, EOFError) as e:
        raise corrupt_error(path, e) from e


def _page(page: ET.Element, ctx: ReadContext) -> Article | None:
    fields: dict[str, str] = {}
    redirect = False
    text = ""
    for child in page:
        name = _local(child.tag)
        if name in ("title", "ns", "id"):
            fields[name] = (child.text or "").strip()
        elif name == "redirect":
            redirect = True
        elif name == "revision":
            for sub in child:
                if _local(sub.tag) == "text":
                    text = sub.text or ""
    if fields.get("ns", "0") != "0" or redirect or text.lstrip().lower().startswith("#redirect"):
        ctx.count("pages_skipped")
        return None
    return Article(title=fields.get("title", ""), text="\n".join(wikitext_to_paragraphs(text)),
                   source_id=fields.get("id", ""))
