"""AGM's view of a caption (``explain-mask``) with the CLIP of a run, of a weights file, or (when
there is neither) a random one that shows the mechanism only: the model and the masking settings
resolved the way every verb resolves a run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personsearch.errors import InputError
from personsearch.runs.layout import CHECKPOINT_DIR, CONFIG_FILE, latest_run, load_run_settings
from personsearch.settings import Settings, resolve_settings

#: A random CLIP small enough to build in a moment; only its text tower matters here.
RANDOM_ARCH = dict(embed_dim=256, vision_width=64, vision_layers=1, vision_heads=1, patch_size=16,
                   text_width=256, text_layers=4, text_heads=4)


@dataclass
class ExplainedCaption:
    explanation: Any  # personsearch.model.explain.MaskExplanation
    masking: Any  # personsearch.settings.MaskingSettings: what the explanation used
    source: Path | str | None  # the run or weights; None: a random model (importances mean nothing)
    chosen: bool = False  # the run was picked as the most recent one under runtime.output_dir


def explain_with(
    caption: str,
    *,
    run: str | Path | None = None,
    weights: str | Path | None = None,
    config: str | Path | None = None,
    sets: Sequence[str] = (),
    seed: int = 0,
    layers: int | None = None,
    temperature: float | None = None,
    ratio: float | None = None,
    random: bool = False,
) -> ExplainedCaption:
    """Which tokens AGM finds important in ``caption`` and which one draw (``seed``) masks.

    The model is ``run``'s or ``weights``' CLIP; with neither, the most recent run under the
    settings' output folder (a demo's included). A randomly initialised CLIP (its importances show
    the mechanism only) is used only when asked for with ``random``, never as a silent fallback.
    ``layers``, ``temperature`` and ``ratio`` override the masking settings (of the run, or of
    ``config``/``sets``).
    """
    import torch

    from personsearch.model.explain import explain_caption

    if sum(x is not None and x is not False for x in (run, weights, random)) > 1:
        raise InputError("give one of --run, --weights or --random")
    settings, clip, source, chosen = _model(run, weights, config, list(sets), seed, random)
    overrides = {"layers": layers, "temperature": temperature, "ratio": ratio}
    masking = settings.masking.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if masking.ratio <= 0:
        raise InputError(f"--ratio {masking.ratio} must be above 0")
    generator = torch.Generator().manual_seed(seed)
    explanation = explain_caption(clip, caption, masking, generator=generator)
    return ExplainedCaption(explanation, masking, source, chosen)


def _model(run: str | Path | None, weights: str | Path | None, config: str | Path | None, sets: list[str],
           seed: int, random: bool) -> tuple[Settings, Any, Path | str | None, bool]:
    from personsearch.model import load_clip

    if random:
        import torch

        from personsearch.model import build_clip

        torch.manual_seed(seed)
        clip = build_clip(RANDOM_ARCH, image_size=(16, 16), stride=16).eval()
        return resolve_settings(config=config, sets=sets), clip, None, False

    if weights is not None:
        settings = resolve_settings(config=config, sets=sets)
        clip = load_clip(weights, image_size=settings.model.image_size, stride=settings.model.stride)
        return settings, clip.eval(), weights, False
    chosen = False
    if run is None:
        defaults = resolve_settings(config=config, sets=sets)
        found = [latest_run(defaults.runtime.output_dir, require=f"{CHECKPOINT_DIR}/{tag}.safetensors")
                 for tag in ("best", "last")]
        candidates = [path for path in found if path is not None]
        if candidates:
            run, chosen = max(candidates, key=lambda path: (path / CONFIG_FILE).stat().st_mtime), True
    if run is not None:
        run = Path(run)
        if not run.is_dir():
            raise InputError(f"run folder {run} does not exist", hint="pass a folder under runs/")
        settings = resolve_settings(config=config, sets=sets, base=load_run_settings(run))
        clip = load_clip(run, image_size=settings.model.image_size, stride=settings.model.stride)
        return settings, clip.eval(), run, chosen
    raise InputError(
        "no trained run to explain with: no run under the output folder has weights",
        hint="pass --run RUN or --weights SOURCE (e.g. ViT-B/16), or --random to see the mechanism on an "
             "untrained model (its importances mean nothing)",
    )
