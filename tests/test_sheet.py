"""Contact sheets: layout, frames, labels, wrapping, placeholders for unreadable images, atomic PNG."""

from __future__ import annotations

import logging
from pathlib import Path

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

TILE = (40, 80)


def _solid(color: tuple[int, int, int], size: tuple[int, int] = (48, 144)) -> Image.Image:
    return Image.new("RGB", size, color)


def test_eval_style_sheet_with_frames_labels_and_ground_truth(tmp_path: Path) -> None:
    gallery = tmp_path / "g.jpg"
    _solid((0, 0, 255)).save(gallery)
    tiles = [
        SheetTile(gallery, label="0.91", frame=MATCH),
        SheetTile(_solid((255, 255, 0)), label="0.55", frame=MISMATCH),
    ]
    tiles.append(SheetTile(gallery, label="GT", gap_before=True))
    rows = [SheetRow("a woman in a blue coat", tiles), SheetRow("a man in yellow", tiles[:1])]
    out = tmp_path / "nested" / "eval.png"
    sheet = render_contact_sheet(rows, out, tile_size=TILE, caption_position="above")
    with Image.open(out) as written:
        assert written.format == "PNG"
        assert written.size == sheet.size
    assert [p.name for p in out.parent.iterdir()] == ["eval.png"]  # no temporary file left

    # Find the first row's tiles: the top-left framed tile is below the one-line caption.
    pixels = sheet.load()
    y_tile = next(y for y in range(sheet.height) if pixels[8, y] == (40, 160, 64))
    assert pixels[8 + 1, y_tile + TILE[1] // 2] == (40, 160, 64)  # left frame edge, green
    assert pixels[8 + TILE[0] // 2, y_tile + TILE[1] // 2][2] > 200  # the blue image inside
    x_second = 8 + TILE[0] + 4
    assert pixels[x_second + 1, y_tile + TILE[1] // 2] == (214, 40, 40)  # red frame on the mismatch
    # The ground truth sits after an extra gap, unframed.
    x_gt = x_second + TILE[0] + 4 + 14
    assert pixels[x_gt + TILE[0] // 2, y_tile + TILE[1] // 2][2] > 200
    assert pixels[x_gt + 1, y_tile + TILE[1] // 2] == (128, 128, 128)  # letterbox, no frame
    assert pixels[x_gt - 2, y_tile + TILE[1] // 2] == (255, 255, 255)


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
    assert sheet.getpixel((8 + TILE[0] // 2, 8 + 2)) != (255, 255, 255)  # a drawn placeholder


def test_images_keep_their_aspect_ratio() -> None:
    wide = _solid((255, 0, 0), (160, 40))
    sheet = render_contact_sheet([SheetRow(None, [SheetTile(wide)])], tile_size=TILE)
    column = [sheet.getpixel((8 + TILE[0] // 2, 8 + y)) for y in range(TILE[1])]
    red = sum(1 for p in column if p[0] > 200 and p[1] < 60)
    assert 5 <= red <= 15  # 160x40 fitted into 40 wide -> 10 rows of red, letterboxed in grey


def test_title_and_query_style_rows(tmp_path: Path) -> None:
    tiles = [SheetTile(_solid((i * 20, 0, 0)), label=f"{1 - i / 10:.2f}") for i in range(10)]
    with_title = render_contact_sheet([SheetRow(None, tiles)], tile_size=TILE, title="woman in red coat")
    without = render_contact_sheet([SheetRow(None, tiles)], tile_size=TILE)
    assert with_title.height > without.height
    assert without.width == 2 * 8 + 10 * TILE[0] + 9 * 4


def test_misuse_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        render_contact_sheet([])
    with pytest.raises(ValueError, match="colour|color"):
        render_contact_sheet([SheetRow(None, [SheetTile(_solid((0, 0, 0)), frame="no-such-colour")])])
