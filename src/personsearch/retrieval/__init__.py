"""Gallery indexes and search: write an index of image embeddings, append to it, search it.

The ``export`` and ``query`` verbs are thin layers over these functions::

    from personsearch.retrieval import GalleryIndex, IndexEntry, write_index, append_to_index

    write_index(out, embedding_batches, entries, model_fingerprint, image_root)
    index = GalleryIndex.open(out)
    scores, rows = index.search(text_features, k=10)
    entries = index.metadata(rows)
"""

import importlib
from typing import Any

# Names are imported on first use, so the contact-sheet renderer (used by `prepare synthetic
# --preview`) does not load torch.
_EXPORTS = {
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
