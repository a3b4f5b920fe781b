"""Hugging Face datasets: ``hf:NAME[:CONFIG][:SPLIT]`` streamed with ``datasets.load_dataset``.

Needs the optional dependency (``pip install 'vecrag[hf]'``) and a network, with the hub online (vecrag leaves
``HF_HUB_OFFLINE`` as the user set it; the Makefile and scripts/demo.sh export ``HF_HUB_OFFLINE=1``, so set
``HF_HUB_OFFLINE=0`` there to allow downloads). Rows need ``text``;
``title``, ``lane`` and ``id`` are used when present. The default split is ``train``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

from vecrag.corpus.article import Article, ReadContext
from vecrag.errors import VecragError


def parse_hf(source: str) -> tuple[str, str | None, str]:
    parts = source[len("hf:"):].split(":")
    if not parts[0]:
        raise VecragError(f"{source!r} names no dataset.", hint="write hf:NAME[:CONFIG][:SPLIT], e.g. "
                          "hf:wikimedia/wikipedia:20231101.en:train.")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return name, config, split


def read_hf(source: str, ctx: ReadContext) -> Iterator[Article]:
    name, config, split = parse_hf(source)
    if importlib.util.find_spec("datasets") is None:
        raise VecragError(f"reading {source!r} needs the Hugging Face 'datasets' library, which is not "
                          "installed.", hint="pip install 'vecrag[hf]' (or pip install datasets), make sure a "
                          "network is available and set HF_HUB_OFFLINE=0; or download the data and ingest it "
                          "as JSONL or Parquet.")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise VecragError(f"reading {source!r} needs the network, but HF_HUB_OFFLINE is set.",
                          hint="run with HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 when a network is available.")
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # noqa: BLE001 - any hub/network failure becomes one clear message
        raise VecragError(f"cannot load Hugging Face dataset {source!r}: {type(e).__name__}: {e}",
                          hint="check the dataset name/config/split and the network.") from e
    for i, row in enumerate(ds):
        text = row.get("text")
        if not isinstance(text, str):
            ctx.bad_record(source, i + 1, "row has no string 'text' field.", "pick a dataset with a 'text' column.")
            continue
        yield Article(title=str(row.get("title") or ""), text=text, lane=str(row.get("lane") or ""),
                      source_id=str(row.get("id", i)))
