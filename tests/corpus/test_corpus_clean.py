"""Cleaning of the enwiki-2015 extractor artefacts (DATA.md): headings, empty parentheses, placeholders, tags."""

from __future__ import annotations

import itertools
import json
import lzma
import re

import pytest

from vecrag.corpus import CleanConfig, clean_text, is_heading

EMPTY_PARENS = re.compile(r"\(\s*\)|\(\s*[;,:]|[;,]\s*\)|\[\s*\]")


@pytest.mark.parametrize("line", ["History.", "References.", "External links.", "Early life and family.",
                                  "1933: Emigration to U.S..", "Hollywood detour (1966–68).", "Dr. Robert Stadler.",
                                  'Slavery and a "House Divided".', "Relation to differentiability and integrability."])
def test_headings_detected(line):
    assert is_heading(line)


@pytest.mark.parametrize("line", [
    "He was born in 1900 and died in 1950.", "There are no independent schools in the area.",
    "In 1960, Daimler was sold off to Jaguar.", "History", "history of the world.", "And so on...",
    "Anarchism is a political philosophy that advocates stateless societies often defined as self-governed.",
    "As an anti-dogmatic philosophy, anarchism draws on many currents of thought.",
])
def test_sentences_are_not_headings(line):
    assert not is_heading(line)


def test_headings_dropped_as_structure():
    text = "Intro sentence of the article is here.\nHistory.\nThe history paragraph is long enough.\nReferences."
    assert clean_text(text) == "Intro sentence of the article is here.\nThe history paragraph is long enough."
    assert "History." in clean_text(text, CleanConfig(drop_headings=False))


@pytest.mark.parametrize("raw,want", [
    ('Achilles (; Ancient Greek: Ἀχιλλεύς) was a hero.', "Achilles (Ancient Greek: Ἀχιλλεύς) was a hero."),
    ("Phoebus ( ; Φοῖβος, literally \"bright\"), which", "Phoebus (Φοῖβος, literally \"bright\"), which"),
    ("He changed the law (, in 1990) again.", "He changed the law (in 1990) again."),
    ('goal of fostering social change" ().', 'goal of fostering social change".'),
    ("Nothing here ( ) or ( ; ) or (, ) at all.", "Nothing here or or at all."),
    ("Name (born 1950; ) is a writer.", "Name (born 1950) is a writer."),
])
def test_empty_parentheses(raw, want):
    assert clean_text(raw, CleanConfig(drop_headings=False)) == want


def test_placeholders_tags_and_control_characters():
    cfg = CleanConfig(drop_headings=False)
    assert clean_text("The mean formula_2 is defined by formula_13.", cfg) == \
        "The mean [formula] is defined by [formula]."
    assert clean_text("The values of codice_1 were codice_2 on the keyboard.", cfg) == \
        "The values of [code] were [code] on the keyboard."
    assert clean_text("The mean formula_2 is defined.", CleanConfig(formula="")) == "The mean is defined."
    assert clean_text("Expressed by pformula_22, the formula_5th unit, likecodice_89.", cfg) == \
        "Expressed by p[formula], the [formula] unit, like[code]."
    assert clean_text("formula_1\ncodice_3\nReal text stays here.", cfg) == "Real text stays here."
    assert clean_text("Line one ends here.<br>Line two<BR/> too.\n<onlyinclude>Kept text.</onlyinclude>", cfg) \
        == "Line one ends here. Line two too.\nKept text."
    assert clean_text('Fact.<ref name="a">Smith 2001, p. 4.</ref> More<ref name="b" /> text.\n</dl>', cfg) == \
        "Fact. More text."
    assert clean_text("Bad\x00 bytes\x07 and\u200b zero\xa0width\tspace.", cfg) == "Bad bytes and zero width space."
    assert clean_text('class="wikitable sortable"\n{| border=1\n! Year !! Title\ntitle="ctx_ver=Z39.88-2004&rft"\n'
                      "Prose remains.", cfg) == "Prose remains."
    assert clean_text("A <unk> word and <Name> element survive.", cfg) == "A <unk> word and <Name> element survive."
    assert clean_text("Windows\r\nLines\rend.", cfg) == "Windows\nLines\nend."
    assert clean_text("", cfg) == "" and clean_text("\n\n", cfg) == ""


def test_real_articles_are_clean(shared_corpus):
    with lzma.open(shared_corpus, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in itertools.islice(f, 150)]
    n_removed_heads = 0
    for raw in texts:
        out = clean_text(raw)
        assert out == clean_text(out)  # idempotent
        assert "formula_" not in out and "codice_" not in out
        assert not re.search(r"</?(br|onlyinclude|dl|ref|poem)\b", out, re.IGNORECASE)
        assert not EMPTY_PARENS.search(out), EMPTY_PARENS.search(out)
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", out)
        assert not re.search(r"[.,;!?)\]]:\d", out), re.search(r".{20}[.,;!?)\]]:\d.{10}", out)  # {{rp|N}} debris
        paras = out.split("\n")
        assert not {"History.", "References.", "External links.", "See also.", "Further reading."} & set(paras)
        n_removed_heads += len(raw.split("\n")) - len(paras)
    assert n_removed_heads > 500  # headings and debris really were removed


@pytest.mark.parametrize("raw, want", [
    ("invaded Roman Gaul.:233 The Roman Empire", "invaded Roman Gaul. The Roman Empire"),
    ("control codes,:228, 237 and more", "control codes, and more"),
    ("in patterns.:243\u20135", "in patterns."),
    ("be expected.:28:1729\u20131733 Most", "be expected. Most"),
    ("was removed).:247\u2013248 ASCII", "was removed). ASCII"),
    ("ratio 3:2 at 10:30; John 3:16 says", "ratio 3:2 at 10:30; John 3:16 says"),
    ("Note: this stays", "Note: this stays"),
])
def test_page_citation_debris(raw, want):
    """{{rp|233}} page citations survive extraction as ':233' after punctuation; they are removed."""
    assert clean_text(raw) == want
