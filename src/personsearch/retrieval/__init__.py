"""Gallery indexes and search: write an index of image embeddings, append to it, search it.

The ``export`` and ``query`` verbs are thin layers over these functions::

    from personsearch.retrieval import GalleryIndex, IndexEntry, write_index, append_to_index

    write_index(out, embedding_batches, entries, model_fingerprint, image_root)
    index = GalleryIndex.open(out)
    scores, rows = index.search(text_features, k=10)
    entries = index.metadata(rows)
"""

from personsearch.retrieval.ann import build_faiss, recall_at_k
from personsearch.retrieval.index import (
    FORMAT_VERSION,
    GalleryIndex,
    IndexEntry,
    IndexWriter,
    SearchResults,
    append_to_index,
    files_to_embed,
    sha256_of,
    write_index,
)

__all__ = [
    "FORMAT_VERSION",
    "GalleryIndex",
    "IndexEntry",
    "IndexWriter",
    "SearchResults",
    "append_to_index",
    "build_faiss",
    "files_to_embed",
    "recall_at_k",
    "sha256_of",
    "write_index",
]
