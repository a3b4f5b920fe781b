"""vecrag.corpus: read corpora as articles, clean extractor artefacts, and chunk articles into passages.

Public API::

    from vecrag.corpus import iter_articles, Article, Chunker, ChunkerConfig, clean_text

    stats = {}
    chunker = Chunker(ChunkerConfig(max_sentences=3, max_chars=600))
    for art in iter_articles(["../shared/data/enwiki2015/part-01.jsonl.xz"], stats=stats):
        chunks = chunker.chunk(art.text)   # never crosses an article

Formats: jsonl, wikitext, wikiextractor, mediawiki, txt (.txt/.md, one article per file), parquet and
hf:NAME (see ``vecrag.corpus.formats``). Bad input raises ``vecrag.errors.VecragError``.
"""

from vecrag.corpus.article import Article, ReadContext
from vecrag.corpus.chunker import Chunker, ChunkerConfig, split_long
from vecrag.corpus.clean import CleanConfig, clean_text, is_heading
from vecrag.corpus.formats import FORMATS, detect_format
from vecrag.corpus.formats.wikitext import detokenize
from vecrag.corpus.readers import iter_articles, resolve_sources
from vecrag.corpus.segment import SEGMENTERS, make_segmenter

__all__ = [
    "Article", "ReadContext", "Chunker", "ChunkerConfig", "split_long", "CleanConfig", "clean_text",
    "is_heading", "FORMATS", "detect_format", "detokenize", "iter_articles", "resolve_sources",
    "SEGMENTERS", "make_segmenter",
]
