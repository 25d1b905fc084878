"""Hugging Face ``CLIPModel`` weights: a saved folder read, and its names turned into OpenAI's.

Hugging Face splits attention into q/k/v projections and stores the output projections as
``nn.Linear`` weights; OpenAI's names fuse q/k/v into ``in_proj`` and keep the projections
transposed. The attention head counts are not in the weights, so they are read from
``config.json``; only ``quick_gelu`` models are accepted, the activation this CLIP implements.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from torch import Tensor

from personsearch.errors import InputError
from personsearch.model.checkpoint_layout import unwrap_state_dict
from personsearch.model.weight_files import read_weights_file

__all__ = ["convert_hf_state_dict", "is_hf_state_dict", "read_hf_folder"]

logger = logging.getLogger(__name__)

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


def is_hf_state_dict(state_dict: dict[str, Tensor]) -> bool:
    """Whether the keys are Hugging Face's (``vision_model.``/``text_model.``), not OpenAI's."""
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


def read_hf_folder(folder: Path) -> tuple[dict[str, Tensor], dict[str, int]]:
    """A folder saved by ``CLIPModel.save_pretrained``: its weights under OpenAI's names and the
    attention heads its ``config.json`` states (``vision_heads``/``text_heads``)."""
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
    state_dict = unwrap_state_dict(read_weights_file(weights), weights)
    return convert_hf_state_dict(state_dict), heads
