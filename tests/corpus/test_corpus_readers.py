"""Corpus readers: every format on small fixtures written here, plus slices of the real shared files."""

from __future__ import annotations

import bz2
import gzip
import itertools
import json
import lzma
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import SHARED_DATA
from vecrag.corpus import Article, detect_format, detokenize, iter_articles

WIKITEXT = {s: SHARED_DATA / f"wikitext103.wiki.{s}.tokens.xz" for s in ("valid", "test")}


def write_jsonl(path: Path, rows: list[dict], opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


ROWS = [
    {"id": 7, "title": "Alpha", "lane": "science",
     "text": "Alpha is the first letter. It has a long history.\nThe second paragraph is about its many uses."},
    {"id": 8, "title": "Beta", "text": "Beta is the second letter of the Greek alphabet, after alpha."},
]


# ---------------------------------------------------------------- JSONL

@pytest.mark.parametrize("suffix,opener", [(".jsonl", open), (".jsonl.xz", lzma.open), (".jsonl.gz", gzip.open),
                                           (".jsonl.bz2", bz2.open)])
def test_jsonl_plain_and_compressed(tmp_path, suffix, opener):
    path = write_jsonl(tmp_path / f"c{suffix}", ROWS, opener)
    assert detect_format(path) == "jsonl"
    arts = list(iter_articles([str(path)]))
    assert [a.title for a in arts] == ["Alpha", "Beta"]
    assert arts[0] == Article("Alpha", ROWS[0]["text"], lane="science", source_id="7")
    assert arts[1].lane == "" and arts[1].source_id == "8"


def test_jsonl_bad_line_is_fatal_with_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n{not json\n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    it = iter_articles([str(path)])
    assert next(it).title == "Alpha"
    with pytest.raises(Exception) as ei:
        next(it)
    msg = str(ei.value)
    assert type(ei.value).__name__ == "VecragError"
    assert "bad.jsonl" in msg and "line 3" in msg and "skip" in msg


def test_jsonl_missing_text_and_skip_counts(tmp_path):
    from vecrag.errors import VecragError

    path = tmp_path / "c.jsonl"
    lines = [json.dumps(ROWS[0]), '{"title": "no text"}', "[1, 2]", "garbage", '{"title": "T", "text": 5}',
             json.dumps(ROWS[1])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(VecragError, match=r"line 2: .*no \"text\" field"):
        list(iter_articles([str(path)]))
    stats: dict[str, int] = {}
    arts = list(iter_articles([str(path)], on_error="skip", stats=stats))
    assert [a.title for a in arts] == ["Alpha", "Beta"]
    assert stats["bad_lines"] == 4 and stats["articles_read"] == 2 and stats["files"] == 1
    with pytest.raises(VecragError, match="on_error"):
        iter_articles([str(path)], on_error="ignore")


def test_empty_articles_skipped_and_counted(tmp_path):
    rows = [ROWS[0], {"title": "Empty", "text": ""}, {"title": "Headings only", "text": "History.\nReferences."},
            ROWS[1]]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    stats: dict[str, int] = {}
    assert [a.title for a in iter_articles([str(path)], stats=stats)] == ["Alpha", "Beta"]
    assert stats["empty_skipped"] == 2 and stats["articles_read"] == 2
    kept = list(iter_articles([str(path)], skip_empty=False))
    assert len(kept) == 4 and kept[1].text == ""


def test_jsonl_reader_streams(tmp_path):
    """Taking the first articles of a big compressed file must not decompress the whole file into memory."""
    path = tmp_path / "big.jsonl.gz"
    para = "This sentence pads the article so that the file is large when it is decompressed. " * 25
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        for i in range(6000):  # ~13 MB of JSON once decompressed
            f.write(json.dumps({"id": i, "title": f"T{i}", "text": para}) + "\n")
    tracemalloc.start()
    arts = list(itertools.islice(iter_articles([str(path)]), 5))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [a.title for a in arts] == ["T0", "T1", "T2", "T3", "T4"]
    assert peak < 3e6, f"peak {peak / 1e6:.1f} MB for 5 articles: the reader is not streaming"


def test_jsonl_real_corpus_first_articles(shared_corpus):
    stats: dict[str, int] = {}
    arts = list(itertools.islice(iter_articles([str(shared_corpus)], stats=stats), 5))
    assert [a.title for a in arts][:2] == ["Anarchism", "Autism"]
    assert all(a.source_id.isdigit() and a.text for a in arts)
    assert stats["articles_read"] == 5 and stats["files"] == 1
    anarchism = arts[0].text.split("\n")
    assert "Etymology and terminology." not in anarchism and "References." not in anarchism
    assert not any("<br>" in p or "formula_" in p for p in anarchism)


# ---------------------------------------------------------------- several sources, globs, folders

def test_sources_in_order_globs_sorted_and_folders(tmp_path):
    from vecrag.corpus import resolve_sources

    d = tmp_path / "parts"
    d.mkdir()
    for i in (2, 1, 3):
        write_jsonl(d / f"part-{i}.jsonl", [{"title": f"P{i}", "text": f"Text of part {i} is here."}])
    (d / ".hidden.jsonl").write_text("not json\n")
    assert [a.title for a in iter_articles([str(d / "part-*.jsonl")])] == ["P1", "P2", "P3"]
    assert [a.title for a in iter_articles([str(d)])] == ["P1", "P2", "P3"]  # hidden file skipped
    order = [str(d / "part-3.jsonl"), str(d / "part-1.jsonl")]
    assert [a.title for a in iter_articles(order)] == ["P3", "P1"]
    assert len(resolve_sources(order + [str(d / "part-[12].jsonl")])) == 4


# ---------------------------------------------------------------- WikiText

def test_detokenize_examples():
    cases = {
        " Homarus gammarus , known as the European lobster , is a species ( 24 in ) . ":
            "Homarus gammarus, known as the European lobster, is a species (24 in).",
        " 0 @.@ 7 – 2 @.@ 2 kg , 1 @,@ 000 guest @-@ starring ": "0.7–2.2 kg, 1,000 guest-starring",
        ' only becoming " lobster red " on cooking ; then " it " . ':
            'only becoming "lobster red" on cooking; then "it".',
        " Teddy 's Story , they do n't know , Don 't Go , the players ' union ": (
            "Teddy's Story, they don't know, Don't Go, the players' union"),
        " 50 % of $ 5 [ 1 ] ! Really ? Yes : no ": "50% of $5 [1]! Really? Yes: no",
        " the <unk> river ": "the <unk> river",
    }
    for tok, want in cases.items():
        assert detokenize(tok) == want


def test_wikitext_small_fixture(tmp_path):
    text = (" \n = First Article = \n \n Alpha is a letter , it @-@ is . \n \n = = History = = \n \n"
            " It was used ( early ) . \n \n = = = Sub = = = \n \n More text . \n"
            " = not a title = \n \n = Second = \n \n Beta text . \n")
    path = tmp_path / "wiki.train.tokens"
    path.write_text(text, encoding="utf-8")
    assert detect_format(path) == "wikitext"
    arts = list(iter_articles([str(path)]))
    assert [a.title for a in arts] == ["First Article", "Second"]
    assert arts[0].text == "Alpha is a letter, it-is.\nIt was used (early).\nMore text.\n= not a title ="
    assert arts[1].source_id == "wiki.train.tokens#2"


@pytest.mark.parametrize("split", ["valid", "test"])
def test_wikitext_real_files_have_60_articles(split):
    path = WIKITEXT[split]
    if not path.exists():
        pytest.skip(f"shared WikiText fixture not found at {path}")
    arts = list(iter_articles([str(path)]))
    assert len(arts) == 60
    assert not any("=" in a.title for a in arts)
    body = "\n".join(a.text for a in arts)
    assert " @-@ " not in body and " @,@ " not in body and " @.@ " not in body and " , " not in body
    assert not any(p.startswith("= =") for a in arts for p in a.text.split("\n"))
    if split == "test":
        kfilter = next(a for a in arts if a.title == "Constant k filter")
        assert "1 henry and capacitance C" in kfilter.text  # the formula line stays inside its article
        assert arts[0].title == "Robert Boulter" and arts[-1].title == "The Hustler (film)"
    else:
        assert arts[0].title == "Homarus gammarus" and arts[2].title == "M-82 (Michigan highway)"


# ---------------------------------------------------------------- WikiExtractor

WIKIEXTRACTOR = """<doc id="12" url="https://en.wikipedia.org/wiki?curid=12" title="Anarchism">
Anarchism

Anarchism is a political philosophy. It advocates stateless societies.

As an anti-dogmatic philosophy, anarchism draws on many currents.
</doc>
<doc id="25" url="https://en.wikipedia.org/wiki?curid=25" title="Autism &amp; more">
Autism &amp; more

Autism is a neurodevelopmental disorder.
</doc>
"""


@pytest.mark.parametrize("compress", [False, True])
def test_wikiextractor(tmp_path, compress):
    d = tmp_path / "extracted" / "AA"
    d.mkdir(parents=True)
    if compress:
        path = d / "wiki_00.bz2"
        path.write_bytes(bz2.compress(WIKIEXTRACTOR.encode()))
    else:
        path = d / "wiki_00"
        path.write_text(WIKIEXTRACTOR, encoding="utf-8")
    assert detect_format(path) == "wikiextractor"
    arts = list(iter_articles([str(tmp_path / "extracted")]))
    assert [(a.title, a.source_id) for a in arts] == [("Anarchism", "12"), ("Autism & more", "25")]
    assert arts[0].text == ("Anarchism is a political philosophy. It advocates stateless societies.\n"
                            "As an anti-dogmatic philosophy, anarchism draws on many currents.")


def test_wikiextractor_unclosed_doc(tmp_path):
    path = tmp_path / "wiki_01"
    path.write_text(WIKIEXTRACTOR.replace("</doc>\n<doc", "<doc", 1), encoding="utf-8")
    with pytest.raises(Exception, match="line 1: a <doc> block is not closed"):
        list(iter_articles([str(path)]))


# ---------------------------------------------------------------- MediaWiki XML

MEDIAWIKI = """<?xml version="1.0"?>
<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">
  <siteinfo><sitename>Wikipedia</sitename></siteinfo>
  <page>
    <title>Apollo</title><ns>0</ns><id>1</id>
    <revision><id>5</id><text xml:space="preserve">{{Infobox deity|name=Apollo}}
'''Apollo''' is a [[Greek mythology|Greek]] god.&lt;ref&gt;Smith 2001.&lt;/ref&gt; He is the son of [[Zeus]].
[[File:Apollo.jpg|thumb|A statue of [[Apollo]]]]

== Etymology ==
The name is of uncertain origin &lt;math&gt;x^2&lt;/math&gt;.&lt;!-- note --&gt;
{| class="wikitable"
| a || b
|}
* First item of a list
[[Category:Greek gods]]
[[fr:Apollon]]</text></revision>
  </page>
  <page><title>Apolo</title><ns>0</ns><id>2</id><redirect title="Apollo" />
    <revision><text>#REDIRECT [[Apollo]]</text></revision></page>
  <page><title>Talk:Apollo</title><ns>1</ns><id>3</id><revision><text>Chat about it.</text></revision></page>
  <page><title>Zeus</title><ns>0</ns><id>4</id><revision><text>'''Zeus''' is the sky god.</text></revision></page>
</mediawiki>
"""


@pytest.mark.parametrize("name", ["dump.xml", "dump.xml.bz2"])
def test_mediawiki(tmp_path, name):
    path = tmp_path / name
    data = MEDIAWIKI.encode()
    path.write_bytes(bz2.compress(data) if name.endswith(".bz2") else data)
    assert detect_format(path) == "mediawiki"
    stats: dict[str, int] = {}
    arts = list(iter_articles([str(path)], stats=stats))
    assert [(a.title, a.source_id) for a in arts] == [("Apollo", "1"), ("Zeus", "4")]
    assert stats["pages_skipped"] == 2
    assert arts[0].text.split("\n") == [
        "Apollo is a Greek god. He is the son of Zeus.",
        "The name is of uncertain origin [formula].",
        "First item of a list",
    ]
    assert arts[1].text == "Zeus is the sky god."


def test_mediawiki_truncated(tmp_path):
    path = tmp_path / "dump.xml"
    path.write_text(MEDIAWIKI[: MEDIAWIKI.index("<page><title>Zeus")] + "<page><title>Ze", encoding="utf-8")
    it = iter_articles([str(path)])
    assert next(it).title == "Apollo"
    with pytest.raises(Exception, match="XML is malformed"):
        list(it)


# ---------------------------------------------------------------- txt / md folder

def test_txt_folder(tmp_path):
    d = tmp_path / "notes"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("First paragraph line one\ncontinues here.\n\nSecond paragraph.\n", encoding="utf-8")
    (d / "a.txt").write_text("One line per paragraph.\nAnother paragraph.\n", encoding="utf-8")
    (d / "sub" / "c.md").write_text("# The Real Title\n\nIntro text.\n\n## Section\n\nSection text.\n",
                                    encoding="utf-8")
    (d / ".DS_Store").write_bytes(b"\x00\x01binary")
    arts = list(iter_articles([str(d)]))
    assert [a.title for a in arts] == ["a", "b", "The Real Title"]
    assert arts[0].text == "One line per paragraph.\nAnother paragraph."
    assert arts[1].text == "First paragraph line one continues here.\nSecond paragraph."
    assert arts[2].text == "Intro text.\nSection text."
    assert [a.title for a in iter_articles([str(d / "sub" / "c.md")], fmt="markdown")] == ["The Real Title"]


# ---------------------------------------------------------------- Parquet

def test_parquet(tmp_path):
    path = tmp_path / "corpus.parquet"
    table = pa.table({"id": [1, 2, 3], "title": ["A", "B", None],
                      "text": ["Text of article A is here.", "Text of B is here too.",
                               "The third article has no title at all."],
                      "lane": ["legal", None, "arts"]})
    pq.write_table(table, path, row_group_size=2)
    arts = list(iter_articles([str(path)]))
    assert [(a.title, a.lane, a.source_id) for a in arts] == [("A", "legal", "1"), ("B", "", "2"), ("", "arts", "3")]
    bad = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"body": ["x"]}), bad)
    with pytest.raises(Exception, match="no 'text' column"):
        list(iter_articles([str(bad)]))


# ---------------------------------------------------------------- Hugging Face

def test_hf_source_gives_a_clear_error():
    from vecrag.errors import VecragError

    with pytest.raises(VecragError) as ei:
        list(iter_articles(["hf:wikimedia/wikipedia:20231101.en"]))
    msg = str(ei.value)
    assert "datasets" in msg or "HF_HUB_OFFLINE" in msg
    assert "vecrag[hf]" in msg or "HF_HUB_OFFLINE=0" in msg
