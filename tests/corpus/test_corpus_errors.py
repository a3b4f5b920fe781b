"""Bad corpus input: every case raises VecragError naming the file (and line) and saying what to do."""

from __future__ import annotations

import json
import lzma
import random
from pathlib import Path

import pytest

from vecrag.corpus import iter_articles
from vecrag.errors import VecragError

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


def read_all(*sources: str | Path, **kw) -> list:
    return list(iter_articles([str(s) for s in sources], **kw))


def assert_error(exc: VecragError, path: Path, *words: str) -> None:
    msg = str(exc)
    assert str(path) in msg, msg
    assert "fix:" in msg, msg  # every message says what to do
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.txt", "empty.tokens", "empty.xml", "wiki_00"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(VecragError) as ei:
        read_all(path)
    assert_error(ei.value, path, "empty")


def test_empty_after_decompression_and_blank_only(tmp_path):
    xz = tmp_path / "empty.jsonl.xz"
    xz.write_bytes(lzma.compress(b""))
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\n", encoding="utf-8")
    for path in (xz, blank):
        with pytest.raises(VecragError) as ei:
            read_all(path)
        assert_error(ei.value, path, "empty")


@pytest.mark.parametrize("name,data,what", [
    ("image.png", PNG, "PNG image"),
    ("corpus.jsonl", PNG, "PNG image"),  # a misnamed image is caught by content, not name
    ("random.bin", b"\x00" + random.Random(0).randbytes(4096), "binary"),
    ("data.txt", b"some text\x00\x01\x02 more", "binary"),
])
def test_binary_files(tmp_path, name, data, what):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(VecragError) as ei:
        read_all(path)
    assert_error(ei.value, path, what)


@pytest.mark.parametrize("name,fmt", [("latin.jsonl", None), ("latin.txt", None), ("latin.tokens", None),
                                      ("latin.dat", "wikitext")])
def test_non_utf8_text(tmp_path, name, fmt):
    path = tmp_path / name
    good = json.dumps({"title": "Ok", "text": "A fine first line of text here."}) if name.endswith(".jsonl") \
        else " = Ok = "
    bad = '{"title": "Caf\xe9", "text": "Le caf\xe9 est tr\xe8s bon."}' if name.endswith(".jsonl") \
        else " Le caf\xe9 est tr\xe8s bon . "
    path.write_bytes((good + "\n \n" + bad + "\n").encode("latin-1"))
    with pytest.raises(VecragError) as ei:
        read_all(path, fmt=fmt)
    assert_error(ei.value, path, "line 3", "UTF-8", "iconv")


def test_bad_jsonl_lines_name_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"title": "A", "text": "Good text of a good article."}\n{"title": "B", "txt": "typo"}\n',
                    encoding="utf-8")
    with pytest.raises(VecragError) as ei:
        read_all(path)
    assert_error(ei.value, path, "line 2", "text", "on_error='skip'")
    path.write_text('{"title": "A", "text": "Good text."}\n{"title": "B", "text": "cut off\n', encoding="utf-8")
    with pytest.raises(VecragError) as ei:
        read_all(path)
    assert_error(ei.value, path, "line 2", "not valid JSON")


def test_missing_file_glob_and_folder(tmp_path):
    with pytest.raises(VecragError) as ei:
        iter_articles([str(tmp_path / "nope.jsonl")])  # raised at call time, before iterating
    assert_error(ei.value, tmp_path / "nope.jsonl", "no such file")
    with pytest.raises(VecragError, match=r"matches no file") as ei:
        iter_articles([str(tmp_path / "*.jsonl.xz")])
    assert "fix:" in str(ei.value)
    empty_dir = tmp_path / "d"
    empty_dir.mkdir()
    with pytest.raises(VecragError) as ei:
        iter_articles([str(empty_dir)])
    assert_error(ei.value, empty_dir, "no files")
    with pytest.raises(VecragError, match="no corpus SOURCE"):
        iter_articles([])


def test_unknown_format(tmp_path):
    path = tmp_path / "notes.dat"
    path.write_text("Just some prose without any recognisable structure.\n", encoding="utf-8")
    with pytest.raises(VecragError) as ei:
        read_all(path)
    assert_error(ei.value, path, "cannot tell the corpus format", "--format")
    with pytest.raises(VecragError, match=r"(?s)unknown corpus format 'csv'.*jsonl"):
        iter_articles([str(path)], fmt="csv")
    # forcing a format works for the same file
    assert [a.text for a in read_all(path, fmt="txt")] == ["Just some prose without any recognisable structure."]


def test_corrupt_compressed_file(tmp_path):
    path = tmp_path / "part.jsonl.xz"
    rows = "".join(json.dumps({"title": f"T{i}", "text": f"Article number {i} has text." * 20}) + "\n"
                   for i in range(2000))
    data = lzma.compress(rows.encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VecragError) as ei:
        read_all(path)
    assert_error(ei.value, path, "truncated or corrupt")


def test_malformed_xml_and_parquet(tmp_path):
    xml = tmp_path / "dump.xml"
    xml.write_text("<mediawiki><page><title>A</title></mediawiki>", encoding="utf-8")
    with pytest.raises(VecragError) as ei:
        read_all(xml)
    assert_error(ei.value, xml, "malformed")
    pq_path = tmp_path / "c.parquet"
    pq_path.write_bytes(b"PAR1" + b"garbage" * 10)
    with pytest.raises(VecragError) as ei:
        read_all(pq_path)
    assert_error(ei.value, pq_path, "Parquet")
