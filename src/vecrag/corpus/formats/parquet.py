"""Parquet corpora: columns ``title`` and ``text``, optional ``lane`` and ``id``; read batch by batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vecrag.corpus.article import Article, ReadContext
from vecrag.errors import VecragError

BATCH_ROWS = 1024


def read_parquet(path: Path, ctx: ReadContext) -> Iterator[Article]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise VecragError(f"cannot read it as Parquet ({e}).", path=path,
                          hint="check that the file is a complete Parquet file, or name its real format "
                               "with --format.") from e
    names = set(pf.schema_arrow.names)
    if "text" not in names:
        raise VecragError(f"the Parquet file has no 'text' column (columns: {sorted(names)}).", path=path,
                          hint="rename the column that holds the article text to 'text' (and the title to "
                               "'title').")
    cols = [c for c in ("title", "text", "lane", "id") if c in names]
    row = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=cols):
        data = batch.to_pydict()
        n = batch.num_rows
        titles, texts = data.get("title", [None] * n), data["text"]
        lanes, ids = data.get("lane", [None] * n), data.get("id", [None] * n)
        for i in range(n):
            row += 1
            text = texts[i]
            if not isinstance(text, str):
                if text is None:
                    text = ""
                else:
                    ctx.bad_record(path, None, f"row {row}: 'text' is {type(text).__name__}, not a string.",
                                   "store the article text as a string column.")
                    continue
            yield Article(title=str(titles[i]) if titles[i] is not None else "", text=text,
                          lane=str(lanes[i]) if lanes[i] is not None else "",
                          source_id=str(ids[i]) if ids[i] is not None else f"{path.name}#{row}")
