"""``personsearch explain-mask "CAPTION"``: which words attention-guided masking finds important
and which it masks, coloured token by token."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from personsearch.cli import common
from personsearch.cli.common import ConfigOption, JsonOption, SetOption, print_json, stderr, stdout, terminal_safe
from personsearch.errors import InputError

if TYPE_CHECKING:
    from personsearch.model.clip import CLIP
    from personsearch.settings import Settings
    from personsearch.text.masking import MaskExplanation

# A random CLIP small enough to build in a moment; only its text tower matters here.
_FALLBACK_ARCH = dict(
    embed_dim=256,
    vision_width=64,
    vision_layers=1,
    vision_heads=1,
    patch_size=16,
    text_width=256,
    text_layers=4,
    text_heads=4,
)
_CHECKPOINTS = ("checkpoints/best.safetensors", "checkpoints/last.safetensors")


def explain_mask(
    caption: Annotated[str, typer.Argument(help='The caption to explain, e.g. "a woman in a red coat".')],
    run: Annotated[
        Path | None, typer.Option("--run", help="Run folder whose CLIP and masking settings to use.")
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option("--weights", help="CLIP weights instead of a run: a file, folder or name (ViT-B/16)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**63 - 1, help="Seed of the masking draw.")] = 0,
    layers: Annotated[
        int | None, typer.Option("--layers", min=1, help="Average EOT attention over the last N layers.")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", min=0.0, help="AGM temperature τ (0 = top-k).")
    ] = None,
    ratio: Annotated[
        float | None, typer.Option("--ratio", min=0.0, max=1.0, help="Share of the words to mask.")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Colour a caption's tokens by AGM importance and mark the ones AGM masks.

    Without --run or --weights the most recent run under runs/ is used; when there is none, a
    randomly initialised model shows the mechanism (its importances mean nothing).
    """
    import torch

    from personsearch.text.masking import explain_caption

    if json_:
        common.configure_console_logging(json_mode=True)
    if run is not None and weights is not None:
        raise InputError("give either --run or --weights, not both")
    settings, model = _load(run, weights, config, set_ or (), seed)
    masking = settings.masking
    overrides = {"layers": layers, "temperature": temperature, "ratio": ratio}
    masking = masking.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if masking.ratio <= 0:
        raise InputError(f"--ratio {masking.ratio} must be above 0")
    generator = torch.Generator().manual_seed(seed)
    explanation = explain_caption(model, caption, masking, generator=generator)
    if json_:
        print_json(explanation.to_json())
    else:
        _render(explanation, masking.temperature, masking.layers)


def _load(
    run: Path | None, weights: str | None, config: Path | None, sets: list[str] | tuple[str, ...], seed: int
) -> tuple[Settings, CLIP]:
    from personsearch.model.checkpoints import load_clip
    from personsearch.runs import latest_run
    from personsearch.settings import load_run_settings, resolve_settings

    if weights is not None:
        settings = resolve_settings(config=config, sets=sets)
        return settings, _load_clip(load_clip, weights, settings)
    if run is None:
        defaults = resolve_settings(config=config, sets=sets)
        found = [latest_run(defaults.runtime.output_dir, require=name) for name in _CHECKPOINTS]
        found = [path for path in found if path is not None]
        if found:
            run = max(found, key=lambda path: (path / "config.yaml").stat().st_mtime)
            stderr.print(terminal_safe(f"using the most recent run: {run}"))
    if run is not None:
        if not run.is_dir():
            raise InputError(f"run folder {run} does not exist", hint="pass a folder under runs/")
        settings = resolve_settings(config=config, sets=sets, base=load_run_settings(run))
        return settings, _load_clip(load_clip, run, settings)
    settings = resolve_settings(config=config, sets=sets)
    stderr.print(
        "[yellow]warning:[/] no run or weights found: using a randomly initialised model, so the "
        "importances show the mechanism only (pass --run or --weights for a trained one)",
        highlight=False,
    )
    return settings, _random_clip(seed)


def _load_clip(load_clip, source: str | Path, settings: Settings) -> CLIP:  # type: ignore[no-untyped-def]
    model = load_clip(source, image_size=settings.model.image_size, stride=settings.model.stride)
    return model.eval()


def _random_clip(seed: int) -> CLIP:
    import torch

    from personsearch.model.clip import build_clip

    torch.manual_seed(seed)
    return build_clip(_FALLBACK_ARCH, image_size=(16, 16), stride=16).eval()


def _render(explanation: MaskExplanation, temperature: float, layers: int) -> None:
    from rich.table import Table

    top = max(explanation.importance) or 1.0
    line = Text()
    shown = zip(explanation.tokens, explanation.importance, explanation.masked, strict=True)
    for token, weight, masked in shown:
        if weight == 0 and not masked:
            line.append(terminal_safe(token).plain, style="dim")
        else:
            level = weight / top
            red, green, blue = 255, int(235 - 175 * level), int(200 - 180 * level)
            style = f"black on rgb({red},{green},{blue})"
            if masked:
                style += " bold underline"
            label = terminal_safe(token).plain
            line.append(f"[{label}]" if masked else label, style=style)
        line.append(" ")
    stdout.print(line)
    table = Table(title=f"AGM importance (EOT attention, last {layers} layer(s), τ = {temperature:g})")
    table.add_column("#", justify="right")
    table.add_column("token")
    table.add_column("importance", justify="right")
    table.add_column("")
    table.add_column("masked")
    for index, (token, weight, masked, new_id, old_id) in enumerate(
        zip(
            explanation.tokens,
            explanation.importance,
            explanation.masked,
            explanation.masked_ids,
            explanation.ids,
            strict=True,
        )
    ):
        bar = "█" * round(20 * weight / top)
        mark = ""
        if masked:
            mark = "→ <|mask|>" if new_id == 49405 else ("kept" if new_id == old_id else "→ random token")
        table.add_row(str(index), terminal_safe(token), f"{weight:.3f}", bar, mark)  # a token is never markup
    stdout.print(table)
