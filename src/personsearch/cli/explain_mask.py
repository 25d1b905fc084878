"""``personsearch explain-mask "CAPTION"``: which words attention-guided masking finds important
and which it masks, coloured token by token."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from personsearch.cli import common
from personsearch.cli.common import ConfigOption, JsonOption, SetOption, print_json, stderr, stdout, terminal_safe

if TYPE_CHECKING:
    from personsearch.model.explain import MaskExplanation

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
    random: Annotated[bool, typer.Option(
        "--random", help="Use a randomly initialised model: shows the mechanism only.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Colour a caption's tokens by AGM importance and mark the ones AGM masks.

    Without --run or --weights the most recent run under runs/ (a demo's included) is used;
    --random shows the mechanism on an untrained model (its importances mean nothing).
    """
    from personsearch.runs.explain import explain_with

    if json_:
        common.configure_console_logging(json_mode=True)
    explained = explain_with(caption, run=run, weights=weights, config=config, sets=set_ or (), seed=seed,
                             layers=layers, temperature=temperature, ratio=ratio, random=random)
    if explained.chosen:
        stderr.print(terminal_safe(f"using the most recent run: {explained.source}"))
    if explained.source is None:
        stderr.print(
            "[yellow]note:[/] a randomly initialised model (--random): the importances show the mechanism "
            "only (pass --run or --weights for a trained one)",
            highlight=False,
        )
    masking = explained.masking
    if json_:
        print_json(explained.explanation.to_json())
    else:
        _render(explained.explanation, masking.temperature, masking.layers)


def _render(explanation: MaskExplanation, temperature: float, layers: int) -> None:
    from rich.table import Table

    from personsearch.text.tokenizer import MASK_TOKEN_ID

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
            mark = "→ <|mask|>" if new_id == MASK_TOKEN_ID else ("kept" if new_id == old_id else "→ random token")
        table.add_row(str(index), terminal_safe(token), f"{weight:.3f}", bar, mark)  # a token is never markup
    stdout.print(table)
