"""CLIP backbone (OpenAI names) and checkpoint loading."""

from personsearch.model.checkpoints import (
    convert_hf_state_dict,
    load_clip,
    read_state_dict,
    resize_pos_embed,
    resolve_model_name,
)
from personsearch.model.clip import (
    CLIP,
    CLIPConfig,
    QuickGELU,
    build_clip,
    config_from_state_dict,
    patch_grid,
)
from personsearch.model.irra import IRRA, build_irra

__all__ = [
    "CLIP",
    "CLIPConfig",
    "IRRA",
    "QuickGELU",
    "build_clip",
    "build_irra",
    "config_from_state_dict",
    "convert_hf_state_dict",
    "load_clip",
    "patch_grid",
    "read_state_dict",
    "resize_pos_embed",
    "resolve_model_name",
]
