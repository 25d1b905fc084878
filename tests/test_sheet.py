"""Contact sheets: layout, frames, labels, wrapping, placeholders for unreadable images, atomic PNG."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image, ImageFont

from personsearch.sheet import (
    MATCH,
    MISMATCH,
    SheetRow,
    SheetTile,
    render_contact_sheet,
    wrap_text,
)

TILE = (40, 80)  # the tile_size these tests ask for
# Solid images exactly one tile big are pasted unscaled, so the pixels of these colours (found
# nowhere else on a sheet) locate tiles; as frame colours ("any Pillow colour") they outline them.
MARKERS = ((255, 0, 255), (0, 255, 255), (255, 128, 0), (128, 0, 255))


class Layout(NamedTuple):
    """Spacing measured on a reference rendering (the module keeps its constants private)."""

    margin: int  # around the content
    gap: int  # between two tiles of a row
    separator: int  # extra space before a tile with gap_before


class Box(NamedTuple):
    left: int
    top: int
    right: int  # exclusive
    bottom: int  # exclusive

    @property
    def size(self) -> tuple[int, int]:
        return self.right - self.left, self.bottom - self.top

    @property
    def middle(self) -> int:
        return (self.top + self.bottom) // 2


def _solid(color: tuple[int, int, int], size: tuple[int, int] = (48, 144)) -> Image.Image:
    return Image.new("RGB", size, color)


def _marker(index: int, **tile) -> SheetTile:
    return SheetTile(_solid(MARKERS[index], TILE), **tile)


def _hex(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def _box(sheet: Image.Image, color: tuple[int, int, int]) -> Box:
    """The bounding box of the pixels of exactly ``color``."""
    ys, xs = np.nonzero((np.asarray(sheet.convert("RGB")) == color).all(axis=-1))
    assert xs.size, f"no pixel of {color} on the sheet"
    return Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


@pytest.fixture(scope="module")
def layout() -> Layout:
    """A row of three marker tiles, the third after a gap, drawn without title or caption."""
    sheet = render_contact_sheet([SheetRow(None, [_marker(0), _marker(1), _marker(2, gap_before=True)])],
                                 tile_size=TILE)
    first, second, third = (_box(sheet, color) for color in MARKERS[:3])
    assert first.size == second.size == third.size == TILE
    assert first.top == second.top == third.top == first.left  # the same margin above and left
    gap = second.left - first.right
    measured = Layout(margin=first.left, gap=gap, separator=third.left - second.right - gap)
    assert measured.margin > 0 and measured.gap > 0 and measured.separator > 0, measured
    return measured


def test_eval_style_sheet_with_frames_labels_and_ground_truth(tmp_path: Path, layout: Layout) -> None:
    gallery = tmp_path / "g.jpg"
    _solid((0, 0, 255)).save(gallery)

    def rows(match: str | None, mismatch: str | None, truth: str | None, second_row: str | None) -> list[SheetRow]:
        tiles = [
            SheetTile(gallery, label="0.91", frame=match),
            SheetTile(_solid((255, 255, 0)), label="0.55", frame=mismatch),
            SheetTile(gallery, label="GT", gap_before=True, frame=truth),
        ]
        return [SheetRow("a woman in a blue coat", tiles),
                SheetRow("a man in yellow", [SheetTile(gallery, label="0.91", frame=second_row)])]

    out = tmp_path / "nested" / "eval.png"
    sheet = render_contact_sheet(rows(MATCH, MISMATCH, None, MATCH), out, tile_size=TILE, caption_position="above")
    with Image.open(out) as written:
        assert written.format == "PNG"
        assert written.size == sheet.size
    assert [p.name for p in out.parent.iterdir()] == ["eval.png"]  # no temporary file left

    # The same sheet with every tile outlined in a marker colour shows where the tiles are; frames
    # are drawn inside the tile, so the layout is the same.
    outlined = render_contact_sheet(rows(*map(_hex, MARKERS)), tile_size=TILE, caption_position="above")
    plain = render_contact_sheet(rows(None, None, None, None), tile_size=TILE, caption_position="above")
    assert outlined.size == plain.size == sheet.size
    first, second, truth = (_box(outlined, color) for color in MARKERS[:3])
    assert first.size == second.size == truth.size == TILE
    assert first.left == layout.margin and first.top > layout.margin  # below the one-line caption
    assert second.top == truth.top == first.top
    assert second.left == first.right + layout.gap
    assert truth.left == second.right + layout.gap + layout.separator  # the ground truth after an extra gap
    assert _box(outlined, MARKERS[3]).top > first.bottom  # the second row below the first

    pixels = sheet.load()
    r, g, b = pixels[first.left, first.middle]  # left frame edge: green for a match
    assert g > r and g > b, (r, g, b)
    assert pixels[(first.left + first.right) // 2, first.middle][2] > 200  # the blue image inside
    r, g, b = pixels[second.left, second.middle]  # red frame on the mismatch
    assert r > g and r > b, (r, g, b)
    # The ground truth is the first tile's image, unframed, after a background-coloured gap.
    assert sheet.crop(truth).tobytes() == plain.crop(first).tobytes()
    assert pixels[truth.left - 2, truth.middle] == pixels[0, 0]


def test_long_captions_wrap_to_the_sheet_width() -> None:
    font = ImageFont.load_default(size=12)
    text = " ".join(["pedestrian"] * 40) + " " + "x" * 90
    lines = wrap_text(text, font, 200)
    assert len(lines) > 5
    assert all(font.getlength(line) <= 200 for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    short = render_contact_sheet([SheetRow("short", [SheetTile(_solid((9, 9, 9)))])], tile_size=TILE)
    tall = render_contact_sheet([SheetRow(text, [SheetTile(_solid((9, 9, 9)))])], tile_size=TILE)
    assert tall.width == short.width and tall.height > short.height + 4 * 12


def test_unreadable_and_missing_images_become_placeholders(tmp_path: Path, caplog) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    rows = [SheetRow(None, [SheetTile(broken, label="0.10"), SheetTile(tmp_path / "gone.png")])]
    with caplog.at_level(logging.WARNING, logger="personsearch.sheet"):
        sheet = render_contact_sheet(rows, tmp_path / "s.png", tile_size=TILE)
    assert "broken.jpg" in caplog.text and "gone.png" in caplog.text
    assert broken.read_bytes() == b"this is not a jpeg"  # input untouched
    reference = render_contact_sheet([SheetRow(None, [_marker(0, label="0.10"), _marker(1)])], tile_size=TILE)
    assert reference.size == sheet.size
    first, second = (sheet.crop(_box(reference, color)) for color in MARKERS[:2])
    assert first.tobytes() == second.tobytes()  # the same placeholder for both
    assert len(first.getcolors()) > 1  # drawn, not a blank tile


def test_images_keep_their_aspect_ratio() -> None:
    wide = _solid((255, 0, 0), (160, 40))
    sheet = render_contact_sheet([SheetRow(None, [SheetTile(wide)])], tile_size=TILE)
    tile = _box(render_contact_sheet([SheetRow(None, [_marker(0)])], tile_size=TILE), MARKERS[0])
    column = [sheet.getpixel(((tile.left + tile.right) // 2, y)) for y in range(tile.top, tile.bottom)]
    red = sum(1 for p in column if p[0] > 200 and p[1] < 60)
    assert 5 <= red <= 15  # 160x40 fitted into 40 wide -> 10 rows of red, letterboxed in grey


def test_title_and_query_style_rows(tmp_path: Path, layout: Layout) -> None:
    tiles = [SheetTile(_solid((i * 20, 0, 0)), label=f"{1 - i / 10:.2f}") for i in range(10)]
    with_title = render_contact_sheet([SheetRow(None, tiles)], tile_size=TILE, title="woman in red coat")
    without = render_contact_sheet([SheetRow(None, tiles)], tile_size=TILE)
    assert with_title.height > without.height
    assert without.width == 2 * layout.margin + 10 * TILE[0] + 9 * layout.gap


def test_misuse_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        render_contact_sheet([])
    with pytest.raises(ValueError, match="colour|color"):
        render_contact_sheet([SheetRow(None, [SheetTile(_solid((0, 0, 0)), frame="no-such-colour")])])
