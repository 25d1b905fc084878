"""Plain values and helper functions shared by the tests (fixtures live in ``conftest.py``).

Import from here (``from tests.helpers import TINY_SETS``), never from a ``conftest`` module: pytest
loads conftest files itself, and importing one again makes a second copy of it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

#: Settings (``--set`` items) of a CLIP small enough to train for a few steps in seconds on 2 CPU cores.
TINY_SETS = [
    "model.pretrained=null",
    "model.image_size=[64, 32]",
    "model.stride=16",
    "model.cmt_depth=1",
    "model.arch.embed_dim=64",
    "model.arch.vision_width=64",
    "model.arch.vision_layers=1",
    "model.arch.vision_heads=2",
    "model.arch.patch_size=16",
    "model.arch.text_width=64",
    "model.arch.text_layers=1",
    "model.arch.text_heads=2",
    "train.batch_size=8",
    "train.epochs=2",
    "train.log_period=1",
    "eval.batch_size=64",
    "data.workers=0",
    "schedule.warmup_epochs=0",
    "optim.lr=2e-3",
]

#: What the session's ``trained_run`` fixture adds to TINY_SETS (pass them too when resuming it):
#: two steps only, so the run stops in its first epoch and can be resumed (``--max-steps 3``);
#: one head per 64 channels, as every OpenAI CLIP, because an IRRA output folder does not record
#: head counts and is read back with width / 64 heads (tests/test_eval.py compares the two).
TRAINED_RUN_SETS = ["train.max_steps=2", "model.arch.vision_heads=1", "model.arch.text_heads=1"]

#: A tiny CLIP architecture (``build_clip(TINY_ARCH, image_size=TINY_IMAGE_SIZE, stride=8)``: a 4x2
#: patch grid). Width 64 -> one head per tower, as read back from weights (OpenAI: heads = width / 64).
#: Tests get a fresh copy from the ``tiny_arch`` fixture; module-level code uses this constant.
TINY_ARCH = dict(
    embed_dim=32,
    vision_width=64,
    vision_layers=1,
    vision_heads=1,
    patch_size=8,
    text_width=64,
    text_layers=2,
    text_heads=1,
)
#: The image size (height, width) that goes with TINY_ARCH.
TINY_IMAGE_SIZE = (32, 16)

#: TINY_ARCH for IRRA and settings-built models: IRRA's cross-modal heads are embed_dim // 64 (so it
#: needs embed_dim 64), and the settings' default model.stride (16) must not exceed the patch size.
TINY_IRRA_ARCH = dict(TINY_ARCH, embed_dim=64, patch_size=16)
#: The text context of the tiny IRRA models (a short one keeps the MLM head cheap).
TINY_IRRA_CONTEXT = 24


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of ``path`` itself), by relative name."""
    path = Path(path)
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def clip_inputs(image_size: tuple[int, int], context: int) -> tuple[Any, Any]:
    """Two images and two captions (3 and 7 words, SOT ... EOT, zero-padded to ``context``)."""
    import torch

    from personsearch.text import EOT_TOKEN_ID, SOT_TOKEN_ID

    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, *image_size, generator=generator)
    ids = torch.zeros(2, context, dtype=torch.long)
    ids[:, 0] = SOT_TOKEN_ID
    ids[0, 1:4] = torch.tensor([320, 1929, 2533])
    ids[0, 4] = EOT_TOKEN_ID
    ids[1, 1:8] = torch.arange(400, 407)
    ids[1, 8] = EOT_TOKEN_ID
    return images, ids


def tiny_irra_batch(size: int = 6, seed: int = 0, image_ids: bool = True) -> dict[str, Any]:
    """A training batch for the tiny IRRA models: captions of varied length, two shared identities."""
    import torch

    from personsearch.text import EOT_TOKEN_ID, SOT_TOKEN_ID

    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(size, TINY_IRRA_CONTEXT, dtype=torch.long)
    for row in range(size):
        words = 3 + (row * 5) % 12
        ids[row, 0] = SOT_TOKEN_ID
        ids[row, 1 : words + 1] = torch.randint(1, 49405, (words,), generator=g)
        ids[row, words + 1] = EOT_TOKEN_ID
    batch = {
        "images": torch.randn(size, 3, *TINY_IMAGE_SIZE, generator=g),
        "caption_ids": ids,
        "pids": torch.tensor([0, 0, 1, 2, 2, 3][:size]),
    }
    if image_ids:
        batch["image_ids"] = torch.arange(size)
    return batch
