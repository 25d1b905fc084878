"""CLIP backbone (OpenAI names), the IRRA model around it, and the ways to get one.

One entry point per need:

- :func:`build_clip`: a new, randomly initialised CLIP from an architecture (``settings.model.arch``).
- :func:`clip_from_settings`: the CLIP a run starts from, random or pretrained as
  ``settings.model.pretrained`` says.
- :func:`load_clip`: a CLIP with the weights of a file, folder or model name
  (:func:`load_checkpoint` also gives the IRRA heads the checkpoint carried).

A trained model from a run folder is ``personsearch.runs.load_trained``.
"""

from personsearch.model.adapt import resize_pos_embed
from personsearch.model.checkpoints import (
    LoadedCheckpoint,
    load_checkpoint,
    load_clip,
    read_state_dict,
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
from personsearch.model.explain import MaskExplanation, explain_caption
from personsearch.model.factory import clip_from_settings
from personsearch.model.hf_clip import convert_hf_state_dict
from personsearch.model.irra import IRRA, build_irra

__all__ = [
    "CLIP",
    "CLIPConfig",
    "IRRA",
    "LoadedCheckpoint",
    "MaskExplanation",
    "QuickGELU",
    "build_clip",
    "build_irra",
    "clip_from_settings",
    "config_from_state_dict",
    "convert_hf_state_dict",
    "explain_caption",
    "load_checkpoint",
    "load_clip",
    "patch_grid",
    "read_state_dict",
    "resize_pos_embed",
    "resolve_model_name",
]
