"""The warm half of a search server: one model and one index, answering searches from many threads.

All model and index work runs on one worker thread, so neither needs to be thread-safe. Text
queries that arrive while the worker is busy are encoded together in one batch (one encoder call,
one search over the gallery) and each caller gets its own top k; a lone query is not held back.
Rankings are those of ``personsearch query``: the same tokenizer, encoder, search and tie order.

Gallery images are read only through ``GalleryIndex.image_path(row)`` (a row's file, checked to be
inside the image root) and always re-encoded as JPEG, so whatever a file holds, the client gets a
picture of a known type; thumbnails are cached by size.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personsearch.errors import InputError

log = logging.getLogger(__name__)

#: The largest k a search answers: each hit is a JSON object and a thumbnail request.
MAX_K = 1000
#: Text queries encoded in one batch at most.
MAX_TEXT_BATCH = 64
#: A query longer than this (in characters) is refused: only the first 77 tokens count anyway.
MAX_QUERY_CHARS = 2000
#: Thumbnail edge lengths served (the longer side, in pixels).
MIN_THUMBNAIL, MAX_THUMBNAIL = 16, 1024
#: Encoded images kept in memory, in bytes.
IMAGE_CACHE_BYTES = 64 * 1024 * 1024
#: Photos decoded at once (each may take ~100 MB while it is decoded).
PARALLEL_DECODES = 2


class UnknownRow(LookupError):
    """A gallery row that the index does not have (a server answers 404)."""


class Unavailable(RuntimeError):
    """The service is closed or did not answer in time (a server answers 503)."""


@dataclass
class _Job:
    kind: str  # "text", "photo" or "row"
    payload: Any
    k: int
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InputError(f"k must be an integer from 1 to {MAX_K}, got {k!r:.40}")
    return k


def check_text(text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InputError("the query is empty", hint="describe the person to search for, e.g. ?q=woman+in+a+red+coat")
    if len(text) > MAX_QUERY_CHARS:
        raise InputError(f"the query is {len(text)} characters long, more than {MAX_QUERY_CHARS}",
                         hint="describe the person in a sentence or two")
    if "\x00" in text:
        raise InputError("the query contains a NUL character")
    return text


class SearchService:
    """Searches over ``index`` with ``model`` (a ``TrainedModel`` that made it), from any thread."""

    def __init__(self, model: Any, index: Any, device: Any = "cpu", precision: str = "fp32",
                 backend: str = "exact", nprobe: int | None = None, timeout: float = 120.0) -> None:
        from personsearch.retrieval.image_query import check_model

        check_model(model, index)
        self.model, self.index = model, index
        self.device, self.precision = device, precision
        self.backend, self.nprobe = backend, nprobe
        self.timeout = timeout
        self._vocabulary = _vocabulary(model)
        self._jobs: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._index_lock = threading.Lock()  # index metadata reads outside the worker (image paths)
        self._images: OrderedDict[tuple[int, int | None], bytes] = OrderedDict()
        self._images_bytes = 0
        self._images_lock = threading.Lock()
        self._decodes = threading.BoundedSemaphore(PARALLEL_DECODES)
        self._worker = threading.Thread(target=self._work, name="personsearch-search", daemon=True)
        self._worker.start()

    # -- facts ---------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return str(self.model.fingerprint)

    @property
    def image_count(self) -> int:
        """Searchable gallery images (a file re-embedded by an append counts once)."""
        return len(self.index) - len(self.index.dead_rows())

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "images": self.image_count, "model": self.fingerprint}

    # -- searches --------------------------------------------------------------------------------
    def search_text(self, text: str, k: int = 10) -> Any:
        """One ``QueryResult`` for ``text`` (checked: 400-class ``InputError`` when empty or absurd)."""
        return self._submit(_Job("text", check_text(text), check_k(k)))

    def search_photo(self, data: bytes, k: int = 10, name: str = "the upload") -> Any:
        """The gallery ranked by similarity to the image file in ``data`` (``UnsupportedImage``
        when it is not one)."""
        from personsearch.retrieval.image_query import decode_photo

        check_k(k)
        with self._decodes:
            photo = decode_photo(data, name)
        return self._submit(_Job("photo", (photo, name), k))

    def search_row(self, row: int, k: int = 10) -> Any:
        """The gallery ranked by similarity to gallery image ``row`` ("more like this")."""
        self._check_row(row)
        return self._submit(_Job("row", row, check_k(k)))

    def _check_row(self, row: Any) -> int:
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < len(self.index):
            raise UnknownRow(f"row {row!r:.40} is not in the index (it has rows 0..{len(self.index) - 1})")
        return row

    def _submit(self, job: _Job) -> Any:
        with self._wake:
            if self._closed:
                raise Unavailable("the search service is shutting down")
            self._jobs.append(job)
            self._wake.notify()
        if not job.done.wait(self.timeout):
            raise Unavailable(f"the search did not finish within {self.timeout:.0f} s")
        if job.error is not None:
            raise job.error
        return job.result

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._jobs and not self._closed:
                    self._wake.wait()
                if not self._jobs:
                    return
                batch = [self._jobs.popleft()]
                if batch[0].kind == "text":  # every text query waiting joins this batch
                    others: list[_Job] = []
                    while self._jobs and len(batch) < MAX_TEXT_BATCH:
                        job = self._jobs.popleft()
                        (batch if job.kind == "text" else others).append(job)
                    self._jobs.extendleft(reversed(others))
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        try:
            with self._index_lock:
                if batch[0].kind == "text":
                    results = self._rank_texts([job.payload for job in batch], max(job.k for job in batch))
                    for job, result in zip(batch, results, strict=True):
                        result.results = result.results[: job.k]
                        job.result = result
                else:
                    batch[0].result = self._rank_one(batch[0])
        except BaseException as exc:  # handed to the waiting callers, never lost in this thread
            for job in batch:
                job.error = exc
        finally:
            for job in batch:
                job.done.set()

    def _rank_texts(self, texts: list[str], k: int) -> list[Any]:
        from personsearch.retrieval.query import encode_queries, rank_results
        from personsearch.runs import knows_query

        features, truncated = encode_queries(self.model, texts, device=self.device, precision=self.precision)
        results = rank_results(self.index, texts, features, k, backend=self.backend, nprobe=self.nprobe,
                               truncated=truncated)
        if self._vocabulary is not None:
            for result in results:
                result.known_words = knows_query(self._vocabulary, result.query)
        return results

    def _rank_one(self, job: _Job) -> Any:
        from personsearch.retrieval.image_query import encode_photos, search_row
        from personsearch.retrieval.query import rank_results

        if job.kind == "row":
            return search_row(self.index, job.payload, job.k)
        photo, name = job.payload
        features = encode_photos(self.model, [photo], device=self.device, precision=self.precision)
        return rank_results(self.index, [name], features, job.k, backend=self.backend, nprobe=self.nprobe)[0]

    # -- images ----------------------------------------------------------------------------------
    def image(self, row: int, size: int | None = None) -> bytes:
        """Gallery image ``row`` as JPEG bytes, its longer side cut to ``size`` when given."""
        self._check_row(row)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                                 or not MIN_THUMBNAIL <= size <= MAX_THUMBNAIL):
            raise InputError(f"size must be an integer from {MIN_THUMBNAIL} to {MAX_THUMBNAIL}, got {size!r:.40}")
        key = (row, size)
        with self._images_lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key]
        data = self._encode_image(row, size)
        with self._images_lock:
            if key not in self._images:
                self._images[key] = data
                self._images_bytes += len(data)
                while self._images_bytes > IMAGE_CACHE_BYTES and len(self._images) > 1:
                    _, dropped = self._images.popitem(last=False)
                    self._images_bytes -= len(dropped)
        return data

    def _encode_image(self, row: int, size: int | None) -> bytes:
        from PIL import Image

        from personsearch.data.transforms import ImageLoadError, load_rgb

        with self._index_lock:
            try:
                path = self.index.image_path(row)
            except InputError as exc:  # a tampered row: refused, and said so in the log
                log.warning("%s", exc.message)
                raise UnknownRow(f"the image of row {row} is not served: its path leaves the gallery") from None
        with self._decodes:
            try:
                image = load_rgb(path)
            except ImageLoadError as exc:
                raise UnknownRow(f"the image of row {row} cannot be read ({_reason(exc)})") from None
            if size is not None:
                image.thumbnail((size, size), Image.Resampling.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90 if size is None else 85)
        return buffer.getvalue()

    # -- lifetime --------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker after the searches already submitted; later ones raise ``Unavailable``."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._worker.join(timeout=self.timeout)

    def __enter__(self) -> SearchService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(exc: Exception) -> str:
    return str(exc).split(": ", 1)[-1]


def _vocabulary(model: Any) -> set[str] | None:
    """The words of the captions a run trained on (read once), for the "unknown words" note."""
    if getattr(model, "kind", None) != "run":
        return None
    from personsearch.runs import run_vocabulary

    return run_vocabulary(model.source)


def open_service(index: str | Path | None = None, run: str | Path | None = None, weights: str | Path | None = None,
                 device: str = "auto", precision: str = "fp32", backend: str = "exact", nprobe: int | None = None,
                 verify: bool = True, output_dir: str | Path | None = None,
                 on_stage: Callable[[str], None] | None = None) -> SearchService:
    """Open ``index`` (the newest run's when None, as ``personsearch query``) and load the model that
    made it (or ``run`` / plain CLIP ``weights``, which must match): a service ready to search."""
    from personsearch.retrieval.gallery import GalleryIndex
    from personsearch.retrieval.query import model_for_index, search_target

    if backend not in ("exact", "faiss"):
        raise InputError(f"unknown search backend {backend!r}", hint="use 'exact' or 'faiss'")
    torch_device, index_path, _ = search_target(index, device, precision, output_dir)
    if on_stage is not None:
        on_stage(f"opening index {index_path}")
    gallery = GalleryIndex.open(index_path, verify=verify)
    if backend == "faiss":
        gallery._faiss_index()  # a missing or unreadable FAISS file is said now, not at the first query
    if on_stage is not None:
        on_stage("loading the model")
    model = model_for_index(gallery, run, weights)
    from personsearch.accel import resolve_precision

    chosen = resolve_precision(precision, torch_device).precision  # once, not per request
    return SearchService(model, gallery, torch_device, chosen, backend, nprobe)


__all__ = ["MAX_K", "MAX_QUERY_CHARS", "SearchService", "Unavailable", "UnknownRow", "check_k", "check_text",
           "open_service"]
