"""``iter_articles``: read one or several corpus sources, in order, as one stream of ``Article``s.

A SOURCE entry is a file, a folder (all its files, recursively, sorted by path; hidden files skipped), a
glob (``data/*.jsonl.xz``; matches sorted; ``**`` recurses) or ``hf:NAME[:CONFIG][:SPLIT]``. Sources are
resolved and checked when ``iter_articles`` is called (a missing file or an empty glob raises at once);
files are opened lazily as the iterator advances, so ``itertools.islice(iter_articles(...), 500)`` reads
only what it needs.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from vecrag.corpus.article import Article, ReadContext
from vecrag.corpus.clean import BARE_HEADING_FORMATS, CleanConfig, clean_text
from vecrag.corpus.formats import FORMATS, READERS, check_forced_format, check_format, detect_format
from vecrag.corpus.formats.hf import read_hf
from vecrag.errors import VecragError

_GLOB_CHARS = set("*?[")


def resolve_sources(sources: list[str] | str) -> list[str | Path]:
    """Expand SOURCE entries into an ordered list of files (``Path``) and ``hf:`` names (``str``)."""
    if isinstance(sources, (str, Path)):
        sources = [str(sources)]
    if not sources:
        raise VecragError("no corpus SOURCE given.", hint="pass one or more files, folders or globs.")
    out: list[str | Path] = []
    for src in sources:
        src = str(src)
        if src.startswith("hf:"):
            out.append(src)
            continue
        if _GLOB_CHARS & set(src):
            matches = sorted(glob.glob(src, recursive=True))
            if not matches:
                raise VecragError(f"the glob {src!r} matches no file.", hint="check the pattern (quote it so "
                                  "the shell does not expand it) and the working directory.")
            for m in matches:
                out.extend(_expand(Path(m)))
            continue
        path = Path(src)
        if not path.exists():
            raise VecragError("no such file or folder.", path=path,
                              hint="check the path; SOURCE may be files, folders, globs or hf:NAME.")
        files = _expand(path)
        if not files:
            raise VecragError("the folder holds no files.", path=path, hint="point SOURCE at the corpus files.")
        out.extend(files)
    return out


def _expand(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*")
                      if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return [path]


def iter_articles(sources: list[str] | str, fmt: str | None = None, *, on_error: str = "raise",
                  stats: dict[str, int] | None = None, clean: bool | CleanConfig = True,
                  skip_empty: bool = True) -> Iterator[Article]:
    """Stream the articles of ``sources`` (read in the given order as one corpus).

    ``fmt``: one of ``jsonl, wikitext, wikiextractor, mediawiki, txt, parquet, hf`` to force the format of
    every file; None detects it per file from the name and content (see ``vecrag.corpus.formats``).

    ``on_error``: "raise" (default) stops at the first bad record (a JSONL line that is not JSON or has no
    string ``text``, a malformed WikiExtractor block) with a VecragError naming the file and line; "skip"
    skips and counts it in ``stats["bad_lines"]``. Unreadable files (empty, binary, not UTF-8, corrupt
    compression, unknown format, missing) always raise: they are not records but the wrong input.

    ``clean``: apply ``vecrag.corpus.clean.clean_text`` (extractor artefacts, tags, and bare "History."
    headings for the formats that have them: jsonl, wikiextractor, parquet, hf) to every article; pass a
    ``CleanConfig`` to tune it (``drop_headings=True/False`` forces the heading rule) or False to keep the
    text as read. ``skip_empty``: articles
    with no text left are skipped and counted in ``stats["empty_skipped"]``.

    ``stats``: a dict the caller owns, filled as the iterator advances with ``files`` (files opened),
    ``articles_read`` (articles yielded), ``empty_skipped``, ``bad_lines`` and ``pages_skipped`` (MediaWiki
    pages outside the main namespace or redirects).

    Raises VecragError at call time for a missing file, an empty glob or an unknown ``fmt``; during
    iteration for unreadable files and (with on_error="raise") bad records.
    """
    forced = check_format(fmt) if fmt else None
    items = resolve_sources(sources)
    ctx = ReadContext(on_error=on_error, stats=stats if stats is not None else {})
    cfg = clean if isinstance(clean, CleanConfig) else (CleanConfig() if clean else None)
    return _generate(items, forced, ctx, cfg, skip_empty)


def _generate(items: list[str | Path], forced: str | None, ctx: ReadContext, cfg: CleanConfig | None,
              skip_empty: bool) -> Iterator[Article]:
    for item in items:
        if isinstance(item, str):
            if forced not in (None, "hf"):
                raise VecragError(f"{item!r} is a Hugging Face source but --format {forced} was given.",
                                  hint="drop --format or use --format hf.")
            arts, name = read_hf(item, ctx), "hf"
        else:
            name = forced or detect_format(item)
            if name == "hf":
                raise VecragError("--format hf applies to hf:NAME sources, not to files.", path=item,
                                  hint=f"name a file format instead ({', '.join(f for f in FORMATS if f != 'hf')}).")
            if forced:
                check_forced_format(item, forced)
            arts = READERS[name](item, ctx)
        ctx.count("files")
        file_cfg = cfg
        if cfg is not None and cfg.drop_headings is None:
            file_cfg = replace(cfg, drop_headings=name in BARE_HEADING_FORMATS)
        for art in arts:
            if file_cfg is not None:
                art.text = clean_text(art.text, file_cfg)
            if skip_empty and not art.text.strip():
                ctx.count("empty_skipped")
                continue
            ctx.count("articles_read")
            yield art
