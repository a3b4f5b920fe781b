"""Clean extractor artefacts from article text (built for the enwiki-2015 corpus, safe on other formats).

``clean_text(text)`` works paragraph by paragraph (paragraphs are ``"\\n"``-separated) and returns the
cleaned paragraphs joined by ``"\\n"`` (possibly ""). What it does, in order:

- control characters (NUL, C0/C1 except newline), zero-width marks and BOMs are removed; non-breaking and
  other Unicode spaces become plain spaces;
- ``<ref>...</ref>`` spans are removed, and HTML/MediaWiki tags (``<br>``, ``</dl>``, ``<poem>``,
  ``<onlyinclude>``, ``<span ...>``, ...; a fixed list, so ``<unk>`` or ``<Name>`` in prose survive) are
  stripped;
- ``formula_N`` (from ``<math>``) becomes ``[formula]`` and ``codice_N`` (from ``<code>``) ``[code]``
  (``CleanConfig`` changes the replacements; "" removes them);
- parentheses emptied by removed templates are repaired: ``( ; Ancient Greek: ...)`` -> ``(Ancient
  Greek: ...)``, ``Foo ()`` -> ``Foo``, ``( , )`` -> nothing; spaces before ``, . ; :`` are dropped;
- section headings (bare short lines ending in a period, such as ``History.``, ``External links.``) are
  structure, not text: they are dropped (the paragraph break stays), see ``is_heading``. WikiExtractor
  output has them, hence the enwiki JSONL corpus; ``iter_articles`` applies this rule only to the formats
  in ``BARE_HEADING_FORMATS`` (jsonl, wikiextractor, parquet, hf) unless ``CleanConfig.drop_headings``
  says True/False: the other readers know their headings from the markup;
- table/markup debris lines (``class="wikitable"``, ``{|``, ``|-``), paragraphs left without any letter or
  digit, and placeholder-only paragraphs are dropped; runs of spaces are collapsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TAG_NAMES = ("br|ref|references|dl|dd|dt|poem|onlyinclude|noinclude|includeonly|div|span|dfn|math|code|"
              "sub|sup|small|big|center|blockquote|nowiki|p|b|i|u|s|tt|font|ul|ol|li|table|tr|td|th|"
              "gallery|timeline|hr|abbr|cite|del|ins|em|strong|var|kbd|pre|source|syntaxhighlight|chem|"
              "ce|section|strike|q|wbr|score|mapframe|imagemap|templatedata|hiero|categorytree|caption")
_REF_SPAN = re.compile(r"<ref\b[^<>]*?(?<!/)>.*?</ref\s*>|<ref\b[^<>]*/\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(rf"</?\s*(?:{_TAG_NAMES})\b[^<>]*?/?\s*>", re.IGNORECASE)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u2060\ufeff\ufffe]")
_SPACES = re.compile("[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_FORMULA = re.compile(r"formula_\d+[a-z]*")
_CODE = re.compile(r"codice_\d+[a-z]*")
_PAREN_LEAD = re.compile(r"\(\s*(?:[;,:]\s*)+")
_PAREN_TRAIL = re.compile(r"(?:\s*[;,:])+\s*\)")
_PAREN_EMPTY = re.compile(r"\s*\(\s*\)|\s*\[\s*\]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:])(?=\s|$)")
_DOUBLE_PUNCT = re.compile(r"([,;])\s*(?=[,;.])")
_DEBRIS = re.compile(r"^\s*(?:\{\||\|\}|\|-|\|\+|!\s|(?:class|style|align|width|border|cellpadding|cellspacing|"
                     r"bgcolor|rowspan|colspan|valign|title|id|name)\s*=\s*[\"']?\S)", re.IGNORECASE)
_LEADING_PUNCT = re.compile(r"^[,;:.]+\s*")
# What {{rp|233}} / {{rp|243-5}} page citations leave in extracted Wikipedia text: ".:233 The", "codes,:228, 237 §".
# Only right after punctuation, so ratios, times and verses (3:2, 10:30, John 3:16) are untouched.
_PAGE_REF = re.compile(r"(?<=[.,;!?\"')\]\u201d\u2019])(?::\d{1,5}(?:\s?[\u2013\u2014-]\s?\d{1,5})?"
                       r"(?:,\s?\d{1,5}(?:[\u2013\u2014-]\d{1,5})?)*)+(?=\s|$)")
_ALNUM = re.compile(r"[^\W_]")
_WORD = re.compile(r"[\w'’-]+")

# Words that make a short line a sentence rather than a heading (auxiliaries and very common verbs).
_SENTENCE_WORDS = frozenset(
    "is was are were be been has have had will would can could may might shall should must does did "
    "became becomes remains remained include includes included contains contained consists means refers "
    "lies used uses lived died returned won made took began became wrote said says called runs ran "
    "he she it they we this these those there his her its their our".split())


BARE_HEADING_FORMATS = frozenset({"jsonl", "wikiextractor", "parquet", "hf"})


@dataclass(frozen=True)
class CleanConfig:
    """Replacements for the extractor's placeholders and the heading rule's limits."""

    formula: str = "[formula]"
    code: str = "[code]"
    drop_headings: bool | None = None  # None: by format in iter_articles (see BARE_HEADING_FORMATS); True here
    heading_max_words: int = 8
    heading_max_chars: int = 100


DEFAULT = CleanConfig()


def is_heading(par: str, cfg: CleanConfig = DEFAULT) -> bool:
    """True for a bare section heading such as ``History.``, ``Early life and family.``, ``1933: Emigration.``.

    A heading is one short line (<= 8 words, <= 100 chars) ending in a period (not an ellipsis) that does
    not start lowercase and, from 4 words on, contains no auxiliary/common verb or subject pronoun (``was``,
    ``has``, ``he``, ``there``...). One-sentence paragraphs of 4-10 words without such a word are rare in
    Wikipedia prose; they are the residual error of this rule and are dropped with the headings.
    """
    s = par.strip()
    if not s.endswith(".") or s.endswith("...") or len(s) > cfg.heading_max_chars:
        return False
    if s[0].islower():
        return False
    words = _WORD.findall(s)
    if not words or len(words) > cfg.heading_max_words:
        return False
    if len(words) <= 3:
        return True
    return not any(w.lower() in _SENTENCE_WORDS for w in words)


def clean_paragraph(par: str, cfg: CleanConfig = DEFAULT) -> str:
    """Clean one paragraph (no headings check); returns "" when nothing readable is left."""
    s = _CONTROL.sub("", par)
    s = _SPACES.sub(" ", s)
    if "<" in s:
        s = _REF_SPAN.sub("", s)
        s = _TAG.sub(" ", s)
    if _DEBRIS.match(s):
        return ""
    placeholders = False
    if "formula_" in s:
        s, n = _FORMULA.subn(cfg.formula, s)
        placeholders |= n > 0
    if "codice_" in s:
        s, n = _CODE.subn(cfg.code, s)
        placeholders |= n > 0
    if "(" in s or "[" in s:
        s = _PAREN_LEAD.sub("(", s)
        s = _PAREN_TRAIL.sub(")", s)
        prev = None
        while prev != s:
            prev, s = s, _PAREN_EMPTY.sub("", s)
    if ":" in s:
        s = _PAGE_REF.sub("", s)
    s = _SPACE_BEFORE_PUNCT.sub(r"\1", s)
    s = _DOUBLE_PUNCT.sub("", s)
    s = _LEADING_PUNCT.sub("", _SPACES.sub(" ", s).strip())
    if not _ALNUM.search(s):
        return ""
    if placeholders:
        rest = s.replace(cfg.formula, " ") if cfg.formula else s
        rest = rest.replace(cfg.code, " ") if cfg.code else rest
        if not _ALNUM.search(rest):
            return ""
    return s


def clean_text(text: str, cfg: CleanConfig = DEFAULT) -> str:
    """Clean a whole article (``"\\n"``-separated paragraphs); see the module docstring."""
    out: list[str] = []
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        par = clean_paragraph(raw, cfg)
        if not par or (cfg.drop_headings is not False and is_heading(par, cfg)):
            continue
        out.append(par)
    return "\n".join(out)
