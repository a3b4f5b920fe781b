"""Open corpus files: transparent decompression (by magic bytes), binary sniffing and strict UTF-8 lines.

Every reader goes through ``open_bytes`` / ``iter_lines`` so that the bad-input rules are the same for all
formats: an empty file, a binary file (an image, an archive, random bytes), text that is not UTF-8 and a
corrupt compressed stream each raise ``VecragError`` naming the file (and the line where it applies).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from vecrag.errors import VecragError

COMPRESSED_SUFFIXES = (".xz", ".gz", ".bz2")

_COMPRESSION_MAGIC = ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b", "gz"), (b"BZh", "bz2"))
_BINARY_MAGIC = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a zip archive"), (b"\x7fELF", "an executable"),
    (b"(\xb5/\xfd", "a zstd-compressed file (decompress it first: unzstd FILE)"),
    (b"\x93NUMPY", "a NumPy array"),
)
SNIFF_BYTES = 8192
_CORRUPT = (OSError, EOFError, lzma.LZMAError)


def compression_of(path: Path) -> str | None:
    """'xz' | 'gz' | 'bz2' from the file's magic bytes, or None for a plain file."""
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, name in _COMPRESSION_MAGIC:
        if head.startswith(magic):
            return name
    return None


def strip_compression_suffix(name: str) -> str:
    """'part-01.jsonl.xz' -> 'part-01.jsonl'."""
    for suf in COMPRESSED_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def open_bytes(path: Path) -> BinaryIO:
    """A binary stream of the file's content, decompressed (xz / gzip / bzip2) when its magic says so."""
    kind = compression_of(path)
    if kind == "xz":
        return lzma.open(path, "rb")  # type: ignore[return-value]
    if kind == "gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if kind == "bz2":
        return bz2.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def read_head(path: Path, n: int = SNIFF_BYTES) -> bytes:
    """The first ``n`` decompressed bytes (fewer for a short file)."""
    try:
        with open_bytes(path) as f:
            return f.read(n)
    except _CORRUPT as e:
        raise corrupt_error(path, e) from e


def corrupt_error(path: Path, exc: BaseException) -> VecragError:
    return VecragError(f"cannot decompress the file ({type(exc).__name__}: {exc}); it is truncated or corrupt.",
                       path=path, hint="download or copy the file again, or check it with `xz -t` / `gzip -t`.")


def check_text_head(path: Path, head: bytes) -> None:
    """Raise VecragError when the decompressed head is empty or looks binary."""
    if not head.strip():
        raise VecragError("the file is empty (no text after decompression).", path=path,
                          hint="remove it from SOURCE or point SOURCE at the files that hold the corpus.")
    for magic, what in _BINARY_MAGIC:
        if head.startswith(magic):
            raise VecragError(f"this is {what}, not a text corpus.", path=path,
                              hint="remove it from SOURCE; corpus files are JSONL, WikiText, WikiExtractor, "
                                   "MediaWiki XML, .txt/.md or Parquet.")
    if b"\x00" in head:
        raise VecragError("the file looks binary (it contains NUL bytes), not a text corpus.", path=path,
                          hint="remove it from SOURCE, or name its format with --format if it is Parquet.")


def decode_line(path: Path, lineno: int, raw: bytes) -> str:
    """Strict UTF-8 decoding of one line, with an error that names the line and byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start:e.start + 4]
        raise VecragError(f"line {lineno} is not valid UTF-8 (byte {e.start}: {bad!r}); the corpus must be "
                          "UTF-8 text.", path=path,
                          hint=f"convert it, e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed`, "
                               "then ingest the converted file.") from e


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Stream ``(line_number, text)`` pairs (1-based, trailing newline removed) from a text corpus file.

    Never loads the whole file. Raises VecragError for empty, binary, non-UTF-8 or corrupt compressed files.
    """
    check_text_head(path, read_head(path))
    try:
        with open_bytes(path) as f:
            for lineno, raw in enumerate(f, 1):
                if b"\x00" in raw:
                    raise VecragError(f"line {lineno} contains NUL bytes: the file is binary or corrupt.",
                                      path=path, hint="remove the file from SOURCE or repair it.")
                line = decode_line(path, lineno, raw)
                if line.startswith("\ufeff") and lineno == 1:
                    line = line[1:]
                yield lineno, line.rstrip("\r\n")
    except _CORRUPT as e:
        raise corrupt_error(path, e) from e
