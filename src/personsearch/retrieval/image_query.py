"""Search a gallery index by a photo: "find this person in the other cameras".

The photo goes through the evaluation transform of the model that made the index (the same resize
and normalisation as the gallery's own images at export), so a gallery image queried by itself
scores 1 against its own row and ranks it first. A row of the index can also serve as the query
directly (its stored embedding), without decoding anything.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch

from personsearch.errors import InputError
from personsearch.retrieval.gallery import GalleryIndex
from personsearch.retrieval.query import rank_results

#: An uploaded photo with more pixels than this is refused before it is decoded: a small PNG can
#: inflate to gigabytes (decompression bomb), and a server decodes several uploads at once.
MAX_QUERY_PIXELS = 40_000_000


class UnsupportedImage(InputError):
    """Bytes that are not an image this tool decodes (a server answers 415)."""


def decode_photo(data: bytes, name: str = "the upload", max_pixels: int = MAX_QUERY_PIXELS) -> Any:
    """Upright 8-bit RGB ``PIL.Image`` from the bytes of an image file, or ``UnsupportedImage``.

    The size is read from the header first; an image over ``max_pixels`` is refused undecoded.
    """
    from PIL import Image

    from personsearch.data.transforms import ImageLoadError, load_rgb
    from personsearch.io import IMAGE_FORMATS

    if not data:
        raise UnsupportedImage(f"{name} is empty", hint="send an image file (JPEG, PNG, ...)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked just below
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
                width, height = probe.size
    except (Image.UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        raise UnsupportedImage(f"{name} is not an image file this tool reads",
                               hint=f"send one of: {', '.join(IMAGE_FORMATS)}") from None
    if width * height > max_pixels:
        raise UnsupportedImage(f"{name} is {width}x{height} pixels, more than {max_pixels:,}",
                               hint="send a smaller photo (a person crop needs a few hundred pixels)")
    try:
        return load_rgb(io.BytesIO(data))
    except ImageLoadError as exc:
        reason = str(exc).split(": ", 1)[-1]
        raise UnsupportedImage(f"{name} cannot be decoded: {reason}", hint="send an intact image file") from None


def encode_photos(model: Any, images: list[Any], device: torch.device | str = "cpu",
                  precision: str = "fp32") -> torch.Tensor:
    """Image features [N, D] (float32) of PIL images, preprocessed as the gallery was at export."""
    from personsearch.data.transforms import build_transform
    from personsearch.retrieval.embed import embed_images

    transform = build_transform(tuple(model.settings.model.image_size), train=False)
    batch = torch.stack([transform(image) for image in images])
    clip = model.clip.eval().to(device)
    return embed_images(clip, [batch], device=device, precision=precision)


def check_model(model: Any, index: GalleryIndex) -> None:
    if model.fingerprint != index.model_fingerprint:
        raise InputError(
            f"index {index.path} was made by model {index.model_fingerprint}, not {model.fingerprint} ({model.source})",
            hint="search with the model that exported the index",
        )


def search_photo(model: Any, index: GalleryIndex, photo: Any, k: int = 10, label: str = "image",
                 device: torch.device | str = "cpu", precision: str = "fp32") -> Any:
    """The gallery ranked by similarity to ``photo`` (a PIL image, or the bytes of an image file):
    one ``QueryResult`` whose ``query`` is ``label``."""
    check_model(model, index)
    if isinstance(photo, (bytes, bytearray)):
        photo = decode_photo(bytes(photo))
    features = encode_photos(model, [photo], device=device, precision=precision)
    return rank_results(index, [label], features, k)[0]


def search_row(index: GalleryIndex, row: int, k: int = 10) -> Any:
    """The gallery ranked by similarity to the stored embedding of ``row`` (the row itself first)."""
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < len(index):
        raise IndexError(f"row {row!r:.40} is outside the index (0..{len(index) - 1})")
    shard = int(index.row_offsets.searchsorted(row, side="right")) - 1
    local = row - int(index.row_offsets[shard])
    features = torch.from_numpy(index.embeddings(shard)[local : local + 1].astype("float32"))
    return rank_results(index, [f"row {row}"], features, k)[0]


__all__ = ["MAX_QUERY_PIXELS", "UnsupportedImage", "check_model", "decode_photo", "encode_photos", "search_photo",
           "search_row"]
