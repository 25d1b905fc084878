"""Gallery indexes and search: write an index of image embeddings, append to it, search it.

One call per verb: ``export_run`` (``personsearch export``), ``run_queries`` (``personsearch
query``); ``search_text`` for a caller that holds a model and an index (the demo, a server);
``embed_texts`` / ``embed_images`` for raw features. The index itself::

    from personsearch.retrieval import GalleryIndex, IndexEntry, write_index, append_to_index

    write_index(out, embedding_batches, entries, model_fingerprint, image_root)
    index = GalleryIndex.open(out)
    scores, rows = index.search(text_features, k=10)
    entries = index.metadata(rows)
"""

import importlib
from typing import Any

# Names are imported on first use: `import personsearch.retrieval` alone does not load torch.
_EXPORTS = {
    "embed_images": "embed",
    "embed_texts": "embed",
    "export_images": "export",
    "export_run": "export",
    "QueryHit": "results",
    "QueryResult": "results",
    "run_queries": "query",
    "search_text": "query",
    "build_faiss": "ann",
    "recall_at_k": "ann",
    "FORMAT_VERSION": "index",
    "GalleryIndex": "index",
    "IndexEntry": "index",
    "IndexWriter": "index",
    "SearchResults": "index",
    "append_to_index": "index",
    "files_to_embed": "index",
    "sha256_of": "index",
    "write_index": "index",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'personsearch.retrieval' has no attribute {name!r}")
    return getattr(importlib.import_module(f"personsearch.retrieval.{module}"), name)
