"""``torch.compile`` of the image encoder for embedding runs (``runtime.compile``, ``--compile``).

Only the image encoder, only for inference, and with inductor's freezing: the weights become
constants, so oneDNN gets them prepacked and the elementwise work between matrix products is
fused. On a 2-core AVX-512 CPU that made a ViT-B/16 at 384x128 1.1-1.2x faster in fp32. The text
encoder stays eager: its length-sorted batches come in many lengths, each of which would be a new
compile. A training step gained nothing on the CPU (measured: benchmarks/open_clip_profile.md).
Compiling costs ~15-40 s per image size and batch size on first use; inductor's cache in the
user's cache folder makes later runs pay a fraction of it. Every batch runs at one compiled size
(a short last batch is padded), and a compilation that fails falls back to the plain encoder with
a warning, never failing the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from personsearch.errors import InputError

__all__ = ["CompiledImageEncoder", "check_compile_support", "compiled_image_encoder"]

log = logging.getLogger(__name__)


def _use_user_cache() -> None:
    """Keep inductor's compiled kernels in the user's cache folder (it defaults to /tmp). Those
    kernels are loaded as code, so a folder someone else owns or may write to is not used."""
    from personsearch.io.cache import cache_folder

    folder = cache_folder()
    if folder is None or "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    kernels = folder / "inductor"
    try:
        kernels.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(kernels)
    except OSError:
        return
    if not stat.S_ISDIR(info.st_mode) or info.st_mode & 0o022 or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        log.warning("not keeping compiled kernels in %s: it is not a private folder of this user", kernels)
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(kernels)


def check_compile_support(device: torch.device) -> None:
    """Refuse, before any work, what cannot compile: the CPU backend needs a C++ compiler."""
    if device.type == "cpu" and not any(shutil.which(name) for name in ("g++", "c++", "clang++")):
        raise InputError("--compile on the CPU needs a C++ compiler (g++ or clang++), and none is on PATH",
                         hint="install one (e.g. apt-get install g++), or run without --compile")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--compile runs on cpu or cuda, not {device.type}", hint="run without --compile")


class CompiledImageEncoder:
    """Callable standing in for ``clip.encode_image``: the compiled encoder at one batch size."""

    def __init__(self, encode: Any) -> None:
        self.plain = encode
        self.compiled = torch.compile(encode, dynamic=False, options={"freezing": True})
        self.batch: int | None = None
        self.failed = False

    def __call__(self, images: Tensor) -> Tensor:
        if self.failed:
            return self.plain(images)
        count = images.shape[0]
        if self.batch is None or count > self.batch:
            self.batch = count
        padded = images
        if count < self.batch:  # one compiled size: a short last batch is padded, not recompiled
            padded = torch.cat([images, images.new_zeros(self.batch - count, *images.shape[1:])])
        try:
            return self.compiled(padded)[:count]
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - any compiler failure: the plain encoder is correct
            log.warning("torch.compile of the image encoder failed (%s: %s); continuing without it",
                        type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            self.failed = True
            return self.plain(images)


@contextlib.contextmanager
def compiled_image_encoder(clip: Any, device: torch.device, enabled: bool = True) -> Iterator[Any]:
    """``clip`` with ``encode_image`` compiled (on this instance) while the context lasts.

    For embedding runs only: freezing bakes in the weights as they are, so the plain method comes
    back on exit, before anything could train the model again.
    """
    if not enabled or isinstance(clip.__dict__.get("encode_image"), CompiledImageEncoder):
        yield clip
        return
    check_compile_support(device)
    _use_user_cache()
    clip.encode_image = CompiledImageEncoder(clip.encode_image)
    try:
        yield clip
    finally:
        del clip.encode_image
