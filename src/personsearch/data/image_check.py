"""Is the file an annotation names a usable image? If not, the reason, in words.

Training decodes tens of thousands of images; one that is missing, truncated, hostile (a FIFO, a
symlink out of the dataset, a decompression bomb) or in a format training cannot read is found
here once, at prepare time, and reported against its entry instead of failing a run later.
"""

from __future__ import annotations

import functools
import os
import unicodedata
import warnings
from pathlib import Path

from personsearch.data.annotation_records import shown
from personsearch.io import NotRegularFile, open_regular

_IMAGE_ENDINGS = {"JPEG": (b"\xff\xd9",), "PNG": (b"IEND\xaeB`\x82",)}


def check_image(path: Path, base: Path, verify: bool = False) -> str | None:
    """Why ``path`` is not a usable image, or None. Cheap by default (header, size and, for JPEG
    and PNG, the end marker); ``verify`` decodes it fully. Paths resolving outside ``base``
    (symlinks included) are refused before any byte is read; the file is opened without
    blocking and only as a regular file, in a format training will decode (``IMAGE_FORMATS``)."""
    from PIL import Image

    from personsearch.io import IMAGE_FORMATS

    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        return "image file not found" + _near_miss(path)
    except (OSError, RuntimeError) as exc:
        return f"image path cannot be resolved ({exc})"
    if not real.is_relative_to(base):
        return "image path resolves outside the image folder (symlink?); not read"
    try:
        handle = open_regular(real)  # a FIFO swapped in after the resolve is refused, not waited on
    except NotRegularFile:
        return "image path is not a regular file"
    except OSError as exc:
        return f"image file cannot be opened ({exc.strerror or exc})"
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return "image file is empty"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(handle, formats=IMAGE_FORMATS) as image:
                    width, height = image.size
                    fmt = image.format
                    if width <= 0 or height <= 0:
                        return "image has zero width or height"
                    if verify:
                        image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            return "image is too large to decode safely (decompression-bomb guard)"
        except Image.UnidentifiedImageError:
            return f"not an image file (unrecognised format; read are {', '.join(IMAGE_FORMATS)})"
        except (OSError, SyntaxError, ValueError) as exc:
            return f"image cannot be decoded ({exc})"
        endings = _IMAGE_ENDINGS.get(fmt or "")
        if endings and not verify:
            handle.seek(max(0, size - 64))
            tail = handle.read()
            if not any(ending in tail for ending in endings):
                return f"{fmt} image is truncated (end marker missing)"
    return None


def _near_miss(path: Path) -> str:
    """For a missing image: the name of a file beside it that differs only in Unicode
    normalisation (NFC/NFD, e.g. copied from macOS), letter case or surrounding spaces."""
    try:
        info = os.stat(path.parent)
    except (OSError, ValueError):
        return ""
    found = _loose_names(str(path.parent), info.st_mtime_ns).get(_loose_name(path.name))
    if found is None:
        return ""
    return f"; a file named {shown(found)!r} is there (differs in case, spaces or Unicode form)"


@functools.lru_cache(maxsize=64)
def _loose_names(folder: str, mtime_ns: int) -> dict[str, str]:
    """Loose name -> real name of a folder's entries (cached per folder version; bounded)."""
    names: dict[str, str] = {}
    try:
        with os.scandir(folder) as listing:
            for count, child in enumerate(listing):
                if count >= 200_000:
                    break
                names.setdefault(_loose_name(child.name), child.name)
    except (OSError, ValueError):
        pass
    return names


def _loose_name(name: str) -> str:
    return unicodedata.normalize("NFC", name).strip().casefold()
