"""Load CLIP weights from every format people have them in, always to OpenAI's parameter names.

Formats: OpenAI's TorchScript archives (their tensors read without running the archive's code, see
:mod:`personsearch.model.torchscript`), plain state-dict files (read with ``weights_only=True``, so
a pickle that would run code is refused, never executed), ``.safetensors`` (header validated first),
Hugging Face CLIP folders, IRRA checkpoints (``{"model": ...}`` with a ``base_model.`` prefix, or a
fork's bare CLIP, with or without DataParallel's ``module.``; fp16 as IRRA saves them; no
``logit_scale``, which IRRA's CLIP lacks) and our own run folders, whose weights must match the
sha256 the run recorded. IRRA's heads (classifier, cross-modal branch) are kept apart from the CLIP
weights; keys that are neither are listed in one warning. A model name such as
``ViT-B/16`` resolves to a file the user placed locally; nothing is ever downloaded. The visual
position table is resized to the model's patch grid the way IRRA does (bilinear,
``align_corners=False``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from personsearch.errors import InputError
from personsearch.model.clip import CLIP, CLIPConfig, config_from_state_dict, patch_grid
from personsearch.model.torchscript import is_torchscript, read_torchscript
from personsearch.model.weights_trust import (
    CONFIG_FILE,
    STATE_DIR,
    ensure_unchanged,
    load_safetensors,
    run_weights,
    weights_for_file,
)

__all__ = [
    "CLIP_DIR_ENV",
    "IRRA_HEADS",
    "LoadedCheckpoint",
    "convert_hf_state_dict",
    "load_checkpoint",
    "load_clip",
    "read_state_dict",
    "resize_pos_embed",
    "resolve_model_name",
]

logger = logging.getLogger(__name__)

CLIP_DIR_ENV = "PERSONSEARCH_CLIP_DIR"
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_RUN_CHECKPOINTS = ("best.safetensors", "last.safetensors")
#: Top-level modules of IRRA's model beside ``base_model`` (its heads; not part of CLIP).
IRRA_HEADS = ("classifier", "cross_attn", "cross_modal_transformer", "ln_pre_t", "ln_pre_i", "ln_post", "mlm_head")
#: Optional on load: IRRA's CLIP has no learned temperature (the model's comes from settings).
_OPTIONAL_KEYS = ("logit_scale",)


@dataclasses.dataclass
class _Parts:
    """A checkpoint split into CLIP weights (OpenAI names), IRRA heads, and keys that are neither."""

    clip: dict[str, Tensor]
    heads: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    unknown: list[str] = dataclasses.field(default_factory=list)


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


# ------------------------------------------------------------------------------ file readers


def _read_pickle(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text or "weights_only" in text:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f" (it references {found.group(1)})" if found else ""
            raise InputError(
                f"refusing to load {path}: the pickle holds code or objects beyond tensors{what}",
                hint="only plain state dicts are read; convert the file to .safetensors where you trust it",
            ) from None
        raise InputError(f"cannot read {path}: corrupt pickle ({text.splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"cannot read {path}: the file is truncated or corrupt ({first})",
            hint="copy or download it again",
        ) from None


def _read_file(path: Path) -> Any:
    _ensure_regular(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if is_torchscript(path):
        return read_torchscript(path)
    return _read_pickle(path)


def _ensure_regular(path: Path) -> None:
    """Only a regular file is read as weights: a FIFO would hang the read and a device such as
    /dev/zero (or a link to it) would fill memory without end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"CLIP weights not found: {path} does not exist", hint="check the path") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise InputError(
            f"cannot read {path}: not a regular file (a FIFO, device or socket)",
            hint="pass a weights file (.safetensors, .pt, .pth, .bin), a run folder or a model name",
        )


def _read_verified(path: Path, meta: dict[str, Any] | None) -> Any:
    """Read a weights file checked against its run record; refuse if it changed during the read."""
    content = _read_file(path)
    if meta and meta.get("weights_sha256"):
        ensure_unchanged(path, meta["weights_sha256"])
    return content


# --------------------------------------------------------------------------- name conversion


def _unwrap(obj: Any, origin: Path) -> dict[str, Tensor]:
    """Find the tensor dict inside IRRA's ``{"model": ...}`` or a ``{"state_dict": ...}`` wrapper."""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(
            f"{origin} does not hold a state dict (found {type(obj).__name__})",
            hint="expected CLIP weights: a state dict, an IRRA checkpoint or an OpenAI .pt archive",
        )
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def _split(state_dict: dict[str, Tensor]) -> _Parts:
    """Drop DataParallel's ``module.``; with ``base_model.`` (IRRA, our runs) the CLIP is under it and
    IRRA's heads beside it; without it (a fork's bare CLIP) every other key is taken as CLIP's."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    nested = any(key.startswith("base_model.") for key in state_dict)
    parts = _Parts({})
    for key, value in state_dict.items():
        if key.split(".", 1)[0] in IRRA_HEADS:
            parts.heads[key] = value
        elif not nested:
            parts.clip[key] = value
        elif key.startswith("base_model."):
            parts.clip[key[len("base_model.") :]] = value
        else:
            parts.unknown.append(key)
    return parts


_HF_BLOCK = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_HF_SINGLE = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_HF_TRANSPOSED = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text_projection"}
_HF_LAYER = re.compile(r"(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def _is_hf(state_dict: dict[str, Tensor]) -> bool:
    return any(key.startswith(("vision_model.", "text_model.")) for key in state_dict)


def convert_hf_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``CLIPModel`` names -> OpenAI names (q/k/v fused, projections transposed)."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        if key in _HF_SINGLE:
            out[_HF_SINGLE[key]] = value
        elif key in _HF_TRANSPOSED:
            out[_HF_TRANSPOSED[key]] = value.t().contiguous()
        elif match := _HF_LAYER.match(key):
            tower, index, part, kind = match.groups()
            prefix = f"{'transformer' if tower == 'text_model' else 'visual.transformer'}.resblocks.{index}."
            if part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((prefix, kind), {})[part[-6]] = value
            elif part in _HF_BLOCK:
                out[f"{prefix}{_HF_BLOCK[part]}.{kind}"] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = ", ".join(f"{p}_proj" for p in "qkv" if p not in parts)
            raise InputError(f"Hugging Face CLIP weights lack {missing}.{kind} for {prefix}")
        out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if unknown:
        logger.warning(
            "ignored %d Hugging Face keys not part of CLIP: %s", len(unknown), ", ".join(unknown[:5])
        )
    return out


# ------------------------------------------------------------------------------------ folders


def _read_hf_folder(folder: Path) -> tuple[dict[str, Tensor], dict[str, int]]:
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON errors
        raise InputError(
            f"cannot read {config_path}: {str(exc)[:200]}", hint="it must be a Hugging Face CLIP config"
        ) from None
    heads: dict[str, int] = {}
    for section, field in (("vision_config", "vision_heads"), ("text_config", "text_heads")):
        sub = config.get(section) if isinstance(config, dict) else None
        if not isinstance(sub, dict):
            raise InputError(
                f"{config_path} has no {section!r}", hint="expected a Hugging Face CLIPModel config"
            )
        act = sub.get("hidden_act", "quick_gelu")
        if act != "quick_gelu":
            raise InputError(
                f"{config_path}: {section}.hidden_act is {act!r}; this CLIP implements OpenAI's quick_gelu",
                hint="use an OpenAI CLIP checkpoint (hidden_act 'quick_gelu')",
            )
        if "num_attention_heads" in sub:
            value = sub["num_attention_heads"]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
                raise InputError(
                    f"{config_path}: {section}.num_attention_heads is {str(value)[:40]!r}, "
                    "not a whole number from 1 to 4096",
                    hint="fix config.json (OpenAI CLIP ViT-B/16: 12 vision and 8 text heads)",
                )
            heads[field] = value
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            weights = folder / name
            break
    else:
        raise InputError(
            f"Hugging Face folder {folder} has no model.safetensors or pytorch_model.bin",
            hint="sharded checkpoints are not supported; save the model as one file",
        )
    state_dict = _unwrap(_read_file(weights), weights)
    return convert_hf_state_dict(state_dict), heads


def _run_heads(run_dir: Path) -> dict[str, int]:
    """Attention heads saved in a run's config.yaml (they cannot be read from the weights)."""
    import yaml

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        arch = data["model"]["arch"]
        return {name: int(arch[name]) for name in ("vision_heads", "text_heads") if name in arch}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return {}


def _read_folder(folder: Path) -> tuple[_Parts, dict[str, int]]:
    places = [(folder / "checkpoints", folder)]
    if folder.name == "checkpoints" or any((folder / name).is_file() for name in _RUN_CHECKPOINTS):
        places.append((folder, folder.parent))  # the checkpoints folder itself
    for candidates, run_dir in places:
        if not candidates.is_dir():
            continue
        for tag in ("best", "last"):
            # a run (config.yaml beside its checkpoints) must have the record of its weights
            found = run_weights(candidates, tag, required=(run_dir / CONFIG_FILE).is_file())
            if found is not None:
                path, meta = found
                return _split(_unwrap(_read_verified(path, meta), path)), _run_heads(run_dir)
    if (folder / "config.json").is_file():
        state_dict, heads = _read_hf_folder(folder)
        return _Parts(state_dict), heads
    if (folder / "checkpoints").is_dir():
        raise InputError(
            f"run folder {folder} has no checkpoints/best.safetensors or checkpoints/last.safetensors",
            hint="train the run until it saves a checkpoint, or pass a weights file",
        )
    raise InputError(
        f"{folder} is neither a run folder (checkpoints/best.safetensors) nor a Hugging Face CLIP folder "
        "(config.json + model.safetensors)",
        hint="pass a run folder, a weights file or a model name such as ViT-B/16",
    )


def _read(source: str | os.PathLike[str]) -> tuple[_Parts, dict[str, int], Path]:
    text = os.fspath(source)
    path = Path(text).expanduser()
    if not path.exists():
        if _looks_like_model_name(text):
            path = resolve_model_name(text)
        else:
            raise InputError(f"CLIP weights not found: {path} does not exist", hint="check the path")
    heads: dict[str, int] = {}
    if path.is_dir():
        parts, heads = _read_folder(path)
    else:
        path, meta = weights_for_file(path)  # a run's weights: checked against what the run recorded
        parts = _split(_unwrap(_read_verified(path, meta), path))
        run_dir = _run_of_weights(path)
        if _is_hf(parts.clip):
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
    if path.parent.name == "checkpoints":
        return path.parent.parent
    if STATE_DIR.match(path.parent.name) and path.parent.parent.name == "checkpoints":
        return path.parent.parent.parent
    return None


def read_state_dict(source: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Any supported format (file, folder or model name) -> float32 CPU tensors under OpenAI names."""
    return _read(source)[0].clip


# ---------------------------------------------------------------------------------- adapting


def resize_pos_embed(posemb: Tensor, grid: tuple[int, int]) -> Tensor:
    """Class token + square grid [1 + n*n, C] -> class token + (rows x cols) grid, bilinear like IRRA."""
    positions = posemb.shape[0] - 1
    if positions == grid[0] * grid[1]:
        return posemb
    side = math.isqrt(positions)
    if side * side != positions:
        raise InputError(
            f"visual.positional_embedding has {positions} patch positions: neither a square grid nor the "
            f"model's {grid[0]}x{grid[1]} grid",
            hint="load it with the image size and stride it was trained with",
        )
    token, table = posemb[:1], posemb[1:]
    table = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=grid, mode="bilinear", align_corners=False)
    table = table.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([token, table], dim=0)


def _adapt(state_dict: dict[str, Tensor], model: CLIP, extra: list[str] | None = None) -> dict[str, Tensor]:
    state_dict = dict(state_dict)
    state_dict["visual.positional_embedding"] = resize_pos_embed(
        state_dict["visual.positional_embedding"], model.grid
    )
    context = model.config.context_length
    if state_dict["positional_embedding"].shape[0] > context:
        state_dict["positional_embedding"] = state_dict["positional_embedding"][:context]
    expected = model.state_dict()
    for key in _OPTIONAL_KEYS:
        if key not in state_dict and key in expected:
            logger.info("the checkpoint has no %s (as IRRA's CLIP); the model's temperature comes from settings", key)
            state_dict[key] = expected[key]
    missing = [key for key in expected if key not in state_dict]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"not a complete CLIP checkpoint: missing {shown}")
    unexpected = list(extra or []) + [key for key in state_dict if key not in expected]
    if unexpected:
        shown = ", ".join(unexpected[:8]) + (f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else "")
        logger.warning("ignored %d keys that are neither CLIP parameters nor IRRA heads: %s", len(unexpected), shown)
    for key, target in expected.items():
        if tuple(state_dict[key].shape) != tuple(target.shape):
            raise InputError(
                f"checkpoint tensor {key} has shape {tuple(state_dict[key].shape)}, "
                f"the model expects {tuple(target.shape)}",
                hint="the checkpoint does not match this architecture",
            )
    return {key: state_dict[key] for key in expected}


@dataclasses.dataclass
class LoadedCheckpoint:
    """A loaded CLIP and the IRRA heads its checkpoint carried (float32, IRRA's names, unloaded)."""

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
) -> CLIP:
    """A CLIP with weights from ``source`` (file, folder or model name), float32 on CPU, eval mode.

    The architecture is read from the weights; ``image_size`` and ``stride`` set the patch grid the
    position table is resized to; ``context_length`` (default: the checkpoint's) may only shorten
    the text context.
    """
    return load_checkpoint(source, image_size, stride, context_length).clip


def load_checkpoint(
    source: str | os.PathLike[str],
    image_size: tuple[int, int] = (384, 128),
    stride: int = 16,
    context_length: int | None = None,
) -> LoadedCheckpoint:
    """``load_clip``, also returning the IRRA heads the checkpoint holds (read once, not twice)."""
    parts, heads, path = _read(source)
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
    model = CLIP(config, image_size=image_size, stride=stride)
    model.load_state_dict(_adapt(state_dict, model, parts.unknown))
    logger.info("loaded CLIP %s from %s (grid %dx%d)", _describe(config), path, *model.grid)
    return LoadedCheckpoint(model.eval(), parts.heads, path)


def _describe(config: CLIPConfig) -> str:
    return (
        f"ViT width {config.vision_width} x{config.vision_layers}, patch {config.patch_size}, "
        f"text width {config.text_width} x{config.text_layers}, embed {config.embed_dim}"
    )
