"""Load CLIP weights from every format people have them in, always to OpenAI's parameter names.

The public loader: a source (a file, a folder or a model name) is resolved, read by its format and
fitted to the model. Formats: OpenAI's TorchScript archives (their tensors read without running the
archive's code, see :mod:`personsearch.model.torchscript`), plain state-dict files (read with
``weights_only=True``, so a pickle that would run code is refused, never executed),
``.safetensors`` (header validated first), Hugging Face CLIP folders
(:mod:`personsearch.model.hf_clip`), IRRA checkpoints (``{"model": ...}`` with a ``base_model.``
prefix, or a fork's bare CLIP, with or without DataParallel's ``module.``; fp16 as IRRA saves them;
no ``logit_scale``, which IRRA's CLIP lacks; see :mod:`personsearch.model.checkpoint_layout`) and
our own run folders, whose weights must match the sha256 the run recorded. IRRA's heads
(classifier, cross-modal branch) are kept apart from the CLIP weights; keys that are neither are
listed in one warning. A model name such as ``ViT-B/16`` resolves to a file the user placed
locally; nothing is ever downloaded. The visual position table is resized to the model's patch
grid the way IRRA does (:mod:`personsearch.model.adapt`).

``towers=("text",)`` loads the text encoder alone (what a text query needs). From a ``.safetensors``
file (our runs' checkpoints, a bare CLIP saved as safetensors, a Hugging Face ``model.safetensors``
given as a file) only the text encoder's tensors are read, by name; the image encoder and IRRA's
heads are known by their shapes only. Other formats (pickles, OpenAI's TorchScript archives,
Hugging Face folders) are read whole and their image tensors dropped. Either way the image encoder
is never built, the text encoder is built without random initialisation and takes the tensors read
as its parameters (no second copy), so its text features are bit-identical to the full model's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from personsearch.errors import InputError
from personsearch.model.adapt import adapt_state_dict
from personsearch.model.checkpoint_layout import CheckpointParts, is_text_key, split_heads, unwrap_state_dict
from personsearch.model.clip import CLIP, TOWERS, CLIPConfig, check_towers, config_from_state_dict, patch_grid
from personsearch.model.hf_clip import convert_hf_state_dict, is_hf_state_dict, read_hf_folder
from personsearch.model.weight_files import read_weights_file
from personsearch.model.weights_trust import (
    CHECKPOINT_DIR,
    STATE_DIR,
    ensure_unchanged,
    run_weights,
    weights_for_file,
)
from personsearch.settings import SETTINGS_FILE, resolve_settings

__all__ = [
    "CLIP_DIR_ENV",
    "LoadedCheckpoint",
    "load_checkpoint",
    "load_clip",
    "read_state_dict",
    "resolve_model_name",
]

logger = logging.getLogger(__name__)

CLIP_DIR_ENV = "PERSONSEARCH_CLIP_DIR"
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_RUN_CHECKPOINTS = ("best.safetensors", "last.safetensors")


# ------------------------------------------------------------------------------- name lookup


def _clip_dirs() -> list[Path]:
    dirs = []
    if os.environ.get(CLIP_DIR_ENV):
        dirs.append(Path(os.environ[CLIP_DIR_ENV]).expanduser())
    dirs.append(Path("~/.cache/clip").expanduser())
    return dirs


def _looks_like_model_name(source: str) -> bool:
    return bool(re.fullmatch(r"(ViT|RN)[-\w]*(/\d+)?(@\d+px)?", source))


def resolve_model_name(name: str) -> Path:
    """``ViT-B/16`` -> the first existing ``ViT-B-16.pt`` in ``$PERSONSEARCH_CLIP_DIR``, ``~/.cache/clip``."""
    filename = name.replace("/", "-").replace("@", "-") + ".pt"
    dirs = _clip_dirs()
    for folder in dirs:
        if (folder / filename).is_file():
            return folder / filename
    raise InputError(
        f"CLIP weights {name!r} not found: no {filename} in {' or '.join(str(d) for d in dirs)}",
        hint=f"copy OpenAI's {filename} to {dirs[0] / filename} (or set {CLIP_DIR_ENV} to its folder); "
        "nothing is downloaded",
    )


# ------------------------------------------------------------------------------ run weights


Keep = Callable[[str], bool] | None


def _read_verified(path: Path, meta: dict[str, Any] | None, keep: Keep = None) -> Any:
    """Read a weights file checked against its run record; refuse if it changed during the read."""
    content = read_weights_file(path, keep)
    if meta and meta.get("weights_sha256"):
        ensure_unchanged(path, meta["weights_sha256"])
    return content


def _run_heads(run_dir: Path) -> dict[str, int]:
    """Attention heads saved in a run's config.yaml (they cannot be read from the weights); {} when
    the run has no readable settings. Only heads the file states count, never the defaults."""
    path = run_dir / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        arch = resolve_settings(config=path, environ={}).model.arch
    except InputError:
        return {}
    return {name: getattr(arch, name) for name in ("vision_heads", "text_heads") if name in arch.model_fields_set}


# ------------------------------------------------------------------------------------ sources


def _read_folder(folder: Path, keep: Keep = None) -> tuple[CheckpointParts, dict[str, int]]:
    places = [(folder / CHECKPOINT_DIR, folder)]
    if folder.name == CHECKPOINT_DIR or any((folder / name).is_file() for name in _RUN_CHECKPOINTS):
        places.append((folder, folder.parent))  # the checkpoints folder itself
    for candidates, run_dir in places:
        if not candidates.is_dir():
            continue
        for tag in ("best", "last"):
            # a run (config.yaml beside its checkpoints) must have the record of its weights
            found = run_weights(candidates, tag, required=(run_dir / SETTINGS_FILE).is_file())
            if found is not None:
                path, meta = found
                return split_heads(unwrap_state_dict(_read_verified(path, meta, keep), path)), _run_heads(run_dir)
    if (folder / "config.json").is_file():
        state_dict, heads = read_hf_folder(folder)
        return CheckpointParts(state_dict), heads
    if (folder / CHECKPOINT_DIR).is_dir():
        raise InputError(
            f"run folder {folder} has no checkpoints/best.safetensors or checkpoints/last.safetensors",
            hint="train the run until it saves a checkpoint, or pass a weights file",
        )
    raise InputError(
        f"{folder} is neither a run folder (checkpoints/best.safetensors) nor a Hugging Face CLIP folder "
        "(config.json + model.safetensors)",
        hint="pass a run folder, a weights file or a model name such as ViT-B/16",
    )


def _read(source: str | os.PathLike[str], keep: Keep = None) -> tuple[CheckpointParts, dict[str, int], Path]:
    """The checkpoint split into parts, its attention heads and its path; ``keep``: see ``read_weights_file``."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if not path.exists():
        if _looks_like_model_name(text):
            path = resolve_model_name(text)
        else:
            raise InputError(f"CLIP weights not found: {path} does not exist", hint="check the path")
    heads: dict[str, int] = {}
    if path.is_dir():
        parts, heads = _read_folder(path, keep)
    else:
        path, meta = weights_for_file(path)  # a run's weights: checked against what the run recorded
        parts = split_heads(unwrap_state_dict(_read_verified(path, meta, keep), path))
        run_dir = _run_of_weights(path)
        if is_hf_state_dict(parts.clip):
            parts.clip = convert_hf_state_dict(parts.clip)
        elif run_dir is not None:  # a weights file inside a run: its heads are in config.yaml
            heads = _run_heads(run_dir)
    for key in _OPENAI_EXTRA_KEYS:
        parts.clip.pop(key, None)
    # fp16 (IRRA's convert_weights) or bf16 tensors: computed in float32 here
    parts.clip = {k: v.float() if v.is_floating_point() else v for k, v in parts.clip.items()}
    parts.heads = {k: v.float() if v.is_floating_point() else v for k, v in parts.heads.items()}
    return parts, heads, path


def _run_of_weights(path: Path) -> Path | None:
    """The run folder of ``checkpoints/*.safetensors`` or ``checkpoints/state-*/model.safetensors``."""
    if path.parent.name == CHECKPOINT_DIR:
        return path.parent.parent
    if STATE_DIR.match(path.parent.name) and path.parent.parent.name == CHECKPOINT_DIR:
        return path.parent.parent.parent
    return None


def read_state_dict(source: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Any supported format (file, folder or model name) -> float32 CPU tensors under OpenAI names."""
    return _read(source)[0].clip


# ------------------------------------------------------------------------------------ loading


@dataclasses.dataclass
class LoadedCheckpoint:
    """A loaded CLIP and the IRRA heads its checkpoint carried (float32, IRRA's names, unloaded; for a
    text-encoder-only load from safetensors, shape-only ``meta`` tensors: their names and sizes)."""

    clip: CLIP
    heads: dict[str, Tensor]
    path: Path

    @property
    def num_classes(self) -> int | None:
        """Identities of the checkpoint's classifier (IRRA issue #7: read it, never assume it)."""
        weight = self.heads.get("classifier.weight")
        return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None

    def head_names(self) -> list[str]:
        return sorted({key.split(".", 1)[0] for key in self.heads})


def load_clip(
    source: str | os.PathLike[str],
    image_size: tuple[int, int] = (384, 128),
    stride: int = 16,
    context_length: int | None = None,
    *,
    towers: Any = TOWERS,
) -> CLIP:
    """A CLIP with weights from ``source`` (file, folder or model name), float32 on CPU, eval mode.

    The architecture is read from the weights; ``image_size`` and ``stride`` set the patch grid the
    position table is resized to; ``context_length`` (default: the checkpoint's) may only shorten
    the text context. ``towers=("text",)`` loads the text encoder only (see the module's notes).
    """
    return load_checkpoint(source, image_size, stride, context_length, towers=towers).clip


def load_checkpoint(
    source: str | os.PathLike[str],
    image_size: tuple[int, int] = (384, 128),
    stride: int = 16,
    context_length: int | None = None,
    *,
    towers: Any = TOWERS,
) -> LoadedCheckpoint:
    """``load_clip``, also returning the IRRA heads the checkpoint holds (read once, not twice)."""
    towers = check_towers(towers)
    text_only = "image" not in towers
    parts, heads, path = _read(source, keep=is_text_key if text_only else None)
    state_dict = parts.clip
    config = config_from_state_dict(state_dict)
    if heads:
        config = dataclasses.replace(config, **heads)
    if context_length is not None:
        if context_length > config.context_length:
            raise InputError(
                f"context length {context_length} exceeds the {config.context_length} positions in {path}",
                hint=f"use at most {config.context_length}",
            )
        config = dataclasses.replace(config, context_length=int(context_length))
    patch_grid(image_size, config.patch_size, stride)
    if text_only:  # every value comes from the checkpoint: no random initialisation to overwrite
        with _NoInitialisation():
            model = CLIP(config, image_size=image_size, stride=stride, towers=towers)
        fitted = adapt_state_dict(state_dict, model, parts.unknown)
        model.load_state_dict({key: _own_memory(value) for key, value in fitted.items()}, assign=True)
    else:  # as it always was (training starts from here: its random stream stays the same)
        model = CLIP(config, image_size=image_size, stride=stride)
        model.load_state_dict(adapt_state_dict(state_dict, model, parts.unknown))
    logger.info("loaded CLIP %s from %s (grid %dx%d%s)", _describe(config), path, *model.grid,
                "; text encoder only" if text_only else "")
    return LoadedCheckpoint(model.eval(), parts.heads, path)


def _own_memory(tensor: Tensor) -> Tensor:
    """``tensor`` itself when it is laid out as a freshly allocated parameter would be (contiguous,
    64-byte aligned: the tensors read from safetensors, or converted), else such a copy. The model
    takes these tensors as its parameters, so the kernels see memory like the full model's."""
    if tensor.is_contiguous() and tensor.data_ptr() % _ALIGNMENT == 0:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


#: torch's CPU allocator aligns every allocation to 64 bytes.
_ALIGNMENT = 64


class _NoInitialisation(TorchFunctionMode):
    """While a model is built whose every parameter is then loaded (a strict ``load_state_dict``),
    skip the in-place random and constant fills of its modules' initialisation: the memory is
    allocated, never written twice. Torch function modes are per thread, so nothing else is affected."""

    _SKIPPED = frozenset({"normal_", "uniform_", "fill_", "zero_", "ones_", "zeros_", "constant_",
                          "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_"})

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in self._SKIPPED:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _describe(config: CLIPConfig) -> str:
    return (
        f"ViT width {config.vision_width} x{config.vision_layers}, patch {config.patch_size}, "
        f"text width {config.text_width} x{config.text_layers}, embed {config.embed_dim}"
    )
