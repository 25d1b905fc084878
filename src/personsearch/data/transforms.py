"""Image loading and the CLIP-normalised transforms of DESIGN.md.

``load_rgb`` turns whatever a camera or a dataset stores (EXIF-rotated JPEGs, CMYK, greyscale,
palette or alpha images, 16-bit PNGs) into an 8-bit RGB image, keeping Pillow's
decompression-bomb guard.

Only the raster formats in ``IMAGE_FORMATS`` are decoded: Pillow would hand an EPS file's
PostScript to Ghostscript (a program written by whoever wrote the file), and the rarer plugins
are attack surface no pedestrian dataset needs. Paths are opened without blocking and only when
they name a regular file, so a FIFO or device swapped in for an image cannot hang a run.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from personsearch.io import IMAGE_FORMATS, NotRegularFile, open_regular

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageLoadError(Exception):
    """An image file that cannot be turned into RGB pixels (the message says why)."""


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        scale = 257.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 1.0
        array = np.clip(np.round(array / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        high = array.max(initial=0)
        array = array * (255.0 if high <= 1.0 else 1.0)
        return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        return image.convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def load_rgb(path: str | Path | BinaryIO) -> Image.Image:
    """Decode ``path`` (or an open binary file) fully as upright 8-bit RGB; alpha is composited
    over white.

    Raises ImageLoadError for missing, special (FIFO, device, folder), truncated, unrecognised,
    unsupported (``IMAGE_FORMATS``) or oversized (bomb) files.
    """
    try:
        handle = open_regular(path) if isinstance(path, (str, os.PathLike)) else path
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: file not found") from None
    except NotRegularFile:
        raise ImageLoadError(f"{path}: not a regular file (a FIFO, socket, device or folder); not read") from None
    except (OSError, ValueError) as exc:  # a link loop, a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ImageLoadError(f"{path}: cannot be opened ({reason})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle, formats=IMAGE_FORMATS) as image:
                image.load()
                upright = ImageOps.exif_transpose(image)
                return _to_rgb(upright if upright is not None else image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(f"{path}: too large to decode safely (decompression-bomb guard)") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file (or a format not read: {', '.join(IMAGE_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{path}: cannot be decoded ({exc})") from None
    finally:
        if handle is not path:
            handle.close()


def build_transform(image_size: tuple[int, int] = (384, 128), train: bool = False, augment: bool = True):  # noqa: ANN201
    """PIL image -> normalised ``FloatTensor[3, H, W]``, the pipeline of IRRA's ``build_transforms``.

    Evaluation: bilinear resize to (H, W) (torchvision's default, as IRRA), CLIP mean/std.
    Training without augmentation: resize, horizontal flip, normalise (IRRA keeps the flip when
    ``img_aug`` is off). Training with augmentation: resize, horizontal flip, pad 10 + random crop
    back to (H, W), normalise, random erasing (scale 0.02-0.4) filled with the mean.
    """
    from torchvision import transforms as T

    height, width = int(image_size[0]), int(image_size[1])
    resize = T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR)
    normalise = T.Normalize(mean=CLIP_MEAN, std=CLIP_STD)
    if not train:
        return T.Compose([resize, T.ToTensor(), normalise])
    if not augment:
        return T.Compose([resize, T.RandomHorizontalFlip(0.5), T.ToTensor(), normalise])
    return T.Compose(
        [
            resize,
            T.RandomHorizontalFlip(0.5),
            T.Pad(10),
            T.RandomCrop((height, width)),
            T.ToTensor(),
            normalise,
            T.RandomErasing(scale=(0.02, 0.4), value=CLIP_MEAN),
        ]
    )
