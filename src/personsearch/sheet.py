"""Contact sheets: rows of image tiles with captions, labels and coloured frames, as one PNG.

One renderer serves three views: the synthetic-data preview (a row per identity, its images and
one caption), ``eval --sheet`` (a row per query: caption, top-k gallery images with scores framed
green for the right identity and red otherwise, then the ground truth after a gap) and
``query --sheet`` (the top-k images with scores; on a gallery of the synthetic set framed green
when the image has every attribute the query names and red otherwise). An unreadable image becomes a placeholder tile
rather than an error, so a sheet over a damaged gallery still renders.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, ImageColor, ImageDraw, ImageFont

from personsearch.io import IMAGE_FORMATS, atomic_write_bytes, open_regular

logger = logging.getLogger(__name__)

#: Frame colours for a retrieved image of the query's identity (or, on the synthetic set, one with
#: every attribute the query names), and of another identity (or one that lacks one).
MATCH = "green"
MISMATCH = "red"

_FRAME_COLORS = {"green": (40, 160, 64), "red": (214, 40, 40)}
_MARGIN = 8
#: The most rows (queries) and tiles per row a command draws; a sheet is held in memory whole,
#: so -k 10**6 or thousands of queries would need gigabytes. MAX_SHEET_PIXELS guards the library call.
MAX_SHEET_ROWS = 100
MAX_SHEET_TILES = 50
MAX_SHEET_PIXELS = 120_000_000
_GAP = 4
_SEPARATOR = 14
_FRAME = 3


def check_sheet_path(path: str | Path, option: str = "--sheet") -> Path:
    """Refuse (exit 2), before any long work, a sheet path that cannot be written: under a file,
    in an unwritable folder (/proc, /sys), a folder, or an existing special file (a FIFO, a
    device) that the sheet would replace."""
    from personsearch.errors import InputError
    from personsearch.io import ensure_writable

    path = Path(path)
    ensure_writable(path, option, folder=False)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise InputError(f"cannot write {option} {path}: {exc.strerror or exc}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise InputError(
            f"{option} {path} exists and is not a regular file", hint="give the name of a PNG file to write"
        )
    return path


def _real_location(path: str | Path) -> str:
    """Where ``path`` itself lives (its folder resolved, a final link not followed: a sheet
    replaces the link, never what it points to)."""
    path = Path(path)
    return os.path.join(os.path.realpath(path.parent if str(path.parent) else "."), path.name)


def _under(real: str, folder: str | Path) -> bool:
    root = os.path.realpath(folder)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def check_sheet_size(rows: int, tiles: int, option: str = "--sheet") -> None:
    """Refuse (exit 2), before any work, a sheet of more than MAX_SHEET_ROWS rows or
    MAX_SHEET_TILES images a row: it is drawn in memory whole."""
    from personsearch.errors import InputError

    if rows > MAX_SHEET_ROWS:
        raise InputError(
            f"{option} draws at most {MAX_SHEET_ROWS} queries, got {rows}",
            hint=f"pass fewer queries with {option}, or leave {option} out",
        )
    if tiles > MAX_SHEET_TILES:
        raise InputError(
            f"{option} draws at most {MAX_SHEET_TILES} images per query, got -k {tiles}",
            hint=f"pass -k {MAX_SHEET_TILES} or less with {option}",
        )


def check_sheet_target(
    path: str | Path,
    option: str = "--sheet",
    *,
    owned: Sequence[tuple[str, str | Path]] = (),
    runs: Sequence[tuple[str, str | Path]] = (),
) -> None:
    """Refuse (exit 2) a sheet that would overwrite what the command reads.

    Nothing is written inside ``owned`` (an index, a prepared dataset, an image folder, a weights
    file); inside ``runs`` (a run folder) a new file or an earlier ``.png`` sheet may be written,
    but no other existing file (weights, settings, metrics) is replaced.
    """
    from personsearch.errors import InputError

    real = _real_location(path)
    for what, folder in owned:
        if folder is not None and _under(real, folder):
            where = "is" if os.path.isfile(folder) else "lies inside"
            raise InputError(f"{option} {path} {where} {what} {folder}", hint=f"write the sheet outside {what}")
    if not os.path.lexists(path) or str(path).lower().endswith(".png"):
        return
    for what, folder in runs:
        if folder is not None and _under(real, folder):
            raise InputError(
                f"{option} {path} would replace a file of {what} {folder}",
                hint="give the sheet a new .png file name",
            )


@dataclass(frozen=True)
class SheetTile:
    """One image in a row: a path (opened lazily) or a PIL image, an optional label under it
    (a score, "GT"), an optional frame colour (``MATCH``, ``MISMATCH`` or any Pillow colour) and
    whether a visible gap separates it from the tile before (e.g. the ground truth after the top-k)."""

    image: Path | str | Image.Image
    label: str | None = None
    frame: str | None = None
    gap_before: bool = False


@dataclass(frozen=True)
class SheetRow:
    """A row of tiles with an optional caption (wrapped to the sheet width)."""

    caption: str | None
    tiles: Sequence[SheetTile] = field(default_factory=tuple)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def _text_width(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str) -> float:
    return font.getlength(text)


def wrap_text(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Greedy word wrap to ``width`` pixels; a single word longer than a line is cut by characters."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if _text_width(font, candidate) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            while _text_width(font, word) > width and len(word) > 1:
                cut = len(word)
                while cut > 1 and _text_width(font, word[:cut]) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            current = word
        lines.append(current)
    return lines


def _placeholder(size: tuple[int, int], font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> Image.Image:
    tile = Image.new("RGB", size, (200, 200, 200))
    draw = ImageDraw.Draw(tile)
    draw.line([(0, 0), (size[0] - 1, size[1] - 1)], fill=(150, 60, 60), width=2)
    draw.line([(0, size[1] - 1), (size[0] - 1, 0)], fill=(150, 60, 60), width=2)
    text = "unreadable" if font.getlength("unreadable") <= size[0] - 4 else "?"
    draw.text((size[0] / 2, size[1] / 2), text, fill=(40, 40, 40), font=font, anchor="mm")
    return tile


def _load(
    tile: SheetTile, size: tuple[int, int], font: ImageFont.ImageFont | ImageFont.FreeTypeFont
) -> Image.Image:
    """The tile's image fitted inside ``size`` (aspect kept, centred on grey)."""
    try:
        if isinstance(tile.image, Image.Image):
            image = tile.image.convert("RGB")
        else:
            with open_regular(tile.image) as raw, Image.open(raw, formats=IMAGE_FORMATS) as handle:
                image = handle.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        logger.warning("contact sheet: cannot read %s (%s); drawing a placeholder", tile.image, exc)
        return _placeholder(size, font)
    scale = min(size[0] / image.width, size[1] / image.height)
    if scale != 1.0:
        fitted = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(fitted, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", size, (128, 128, 128))
    canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    return canvas


def _frame_color(name: str) -> tuple[int, int, int]:
    if name in _FRAME_COLORS:
        return _FRAME_COLORS[name]
    rgb = ImageColor.getrgb(name)  # raises ValueError for an unknown colour
    return rgb[0], rgb[1], rgb[2]


def _row_width(row: SheetRow, tile_w: int) -> int:
    width = 0
    for i, tile in enumerate(row.tiles):
        width += tile_w + (0 if i == 0 else _GAP) + (_SEPARATOR if tile.gap_before and i > 0 else 0)
    return width


def render_contact_sheet(
    rows: Sequence[SheetRow],
    out_path: Path | str | None = None,
    *,
    tile_size: tuple[int, int] = (64, 128),
    title: str | None = None,
    caption_position: Literal["above", "below"] = "below",
    font_size: int = 12,
    min_width: int = 360,
) -> Image.Image:
    """Render ``rows`` into one sheet; write it as a PNG to ``out_path`` (atomically) if given.

    Returns the sheet image. Frames are drawn inside the tile (width 3), labels centred under it.
    """
    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    if tile_size[0] < 8 or tile_size[1] < 8:
        raise ValueError(f"tile_size {tile_size} is too small (at least 8x8)")
    if caption_position not in ("above", "below"):
        raise ValueError(f"caption_position must be 'above' or 'below', not {caption_position!r}")
    font = _font(font_size)
    small = _font(max(8, font_size - 2))
    line_h = font_size + 4
    label_h = font_size + 2
    tile_w, tile_h = tile_size
    content_w = max(min_width - 2 * _MARGIN, *(_row_width(row, tile_w) for row in rows))
    width = content_w + 2 * _MARGIN

    title_lines = wrap_text(title, font, content_w) if title else []
    layouts = []
    height = _MARGIN + (len(title_lines) * line_h + _GAP * 2 if title_lines else 0)
    for row in rows:
        caption_lines = wrap_text(row.caption, font, content_w) if row.caption else []
        has_labels = any(tile.label for tile in row.tiles)
        row_h = (tile_h + (label_h if has_labels else 0)) if row.tiles else 0
        text_h = len(caption_lines) * line_h
        layouts.append((caption_lines, has_labels, row_h, text_h))
        height += row_h + text_h + (_GAP if row_h and text_h else 0) + 2 * _GAP + 1
    height += _MARGIN
    if width * height > MAX_SHEET_PIXELS:
        raise ValueError(
            f"a contact sheet of {width}x{height} pixels is too large (at most {MAX_SHEET_PIXELS} pixels): "
            f"draw at most {MAX_SHEET_ROWS} rows of {MAX_SHEET_TILES} tiles"
        )

    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = _MARGIN
    for line in title_lines:
        draw.text((_MARGIN, y), line, fill=(0, 0, 0), font=font)
        y += line_h
    if title_lines:
        y += _GAP * 2

    def draw_caption(lines: list[str], top: int) -> int:
        for line in lines:
            draw.text((_MARGIN, top), line, fill=(20, 20, 20), font=font)
            top += line_h
        return top

    for row, (caption_lines, _, row_h, _) in zip(rows, layouts, strict=True):
        if caption_position == "above" and caption_lines:
            y = draw_caption(caption_lines, y) + (_GAP if row_h else 0)
        x = _MARGIN
        for i, tile in enumerate(row.tiles):
            if i > 0:
                x += _GAP
                if tile.gap_before:
                    mid = x + _SEPARATOR // 2 - _GAP // 2
                    draw.line([(mid, y), (mid, y + tile_h)], fill=(170, 170, 170), width=1)
                    x += _SEPARATOR
            sheet.paste(_load(tile, tile_size, small), (x, y))
            if tile.frame:
                draw.rectangle(
                    [x, y, x + tile_w - 1, y + tile_h - 1], outline=_frame_color(tile.frame), width=_FRAME
                )
            if tile.label:
                label = tile.label
                while len(label) > 1 and _text_width(small, label) > tile_w:
                    label = label[:-1]
                draw.text((x + tile_w / 2, y + tile_h + 1), label, fill=(0, 0, 0), font=small, anchor="ma")
            x += tile_w
        y += row_h
        if caption_position == "below" and caption_lines:
            y = draw_caption(caption_lines, y + (_GAP if row_h else 0))
        y += _GAP
        draw.line([(_MARGIN, y), (width - _MARGIN, y)], fill=(225, 225, 225), width=1)
        y += 1 + _GAP

    if out_path is not None:
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG", optimize=False)
        atomic_write_bytes(out_path, buffer.getvalue())
    return sheet
