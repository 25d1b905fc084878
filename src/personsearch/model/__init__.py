"""CLIP backbone (OpenAI names) and checkpoint loading."""

from personsearch.model.clip import (
    CLIP,
    CLIPConfig,
    QuickGELU,
    build_clip,
    config_from_state_dict,
    patch_grid,
)

__all__ = ["CLIP", "CLIPConfig", "QuickGELU", "build_clip", "config_from_state_dict", "patch_grid"]
