"""Red-team cases for export, query, eval, explain-mask and weight loading that the trust pass did
not list: markup and terminal escapes in rendered names, special and endless query files, sheets
over inputs, oversized sheets and result sets, special weights files, hostile HF and IRRA configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import tree_digest

from ._support import REPO, assert_input_error, invoke

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def index(trained_run: Path, prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("redteam-index") / "index"
    result = invoke("--quiet", "export", trained_run, "--data", prepared_tiny, "--split", "test", "--out", out,
                    "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return out


def _cli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI as its own process, so a hang shows as a timeout instead of a stuck suite."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "personsearch", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------------ markup and terminal escapes


def test_export_to_a_path_holding_markup_prints_it_literally(trained_run, prepared_tiny, tmp_path):
    (tmp_path / "x[").mkdir()
    out = tmp_path / "x[" / "]idx"  # the path reads "x[/]idx": a closing tag with nothing to close
    result = invoke("--quiet", "export", trained_run, "--data", prepared_tiny, "--split", "test", "--out", out,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "x[/]idx" in result.stdout and "MarkupError" not in result.output


def test_eval_of_a_run_named_with_markup_shows_the_name_and_writes_the_sheet(trained_run, prepared_tiny, tmp_path):
    run = tmp_path / "t[red]"
    shutil.copytree(trained_run, run)
    (tmp_path / "s[").mkdir()
    sheet = tmp_path / "s[" / "]sheet.png"
    result = invoke("eval", run, "--data", prepared_tiny, "--device", "cpu", "--sheet", sheet)
    assert result.exit_code == 0, result.output
    assert "t[red] on" in result.stdout
    assert sheet.is_file() and "MarkupError" not in result.output


def test_query_text_and_paths_cannot_drive_the_terminal(index):
    result = invoke("query", "a\x1b[2J woman \u202e[bold]in red[/]", "--index", index, "-k", "2")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert "\\x1b[2J" in result.stdout and "[bold]in red[/]" in result.stdout


# ------------------------------------------------------------------------------- query files


def test_a_fifo_as_query_file_is_refused_not_waited_on(index, tmp_path):
    fifo = tmp_path / "queries.txt"
    os.mkfifo(fifo)
    result = _cli("query", "--index", index, "--file", fifo, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "not a regular file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom"])
def test_an_endless_device_as_query_file_is_refused(index, tmp_path, target):
    link = tmp_path / "queries.txt"
    link.symlink_to(target)
    assert_input_error(invoke("query", "--index", index, "--file", link), "not a regular file")


def test_a_huge_or_overlong_query_file_is_refused(index, tmp_path):
    from personsearch.retrieval.query import MAX_QUERIES, MAX_QUERY_FILE_BYTES

    big = tmp_path / "big.txt"
    with big.open("wb") as handle:
        handle.truncate(MAX_QUERY_FILE_BYTES + 1)  # sparse: no disk used
    assert_input_error(invoke("query", "--index", index, "--file", big), "larger than")
    many = tmp_path / "many.txt"
    many.write_text("woman\n" * (MAX_QUERIES + 1))
    assert_input_error(invoke("query", "--index", index, "--file", many), "more than")


def test_too_many_results_are_refused_before_encoding(index):
    from personsearch.errors import InputError
    from personsearch.retrieval.query import MAX_RESULTS, check_result_count

    check_result_count(10, 10, 1000)
    with pytest.raises(InputError, match="results"):
        check_result_count(MAX_RESULTS, 10**12, 10)


# --------------------------------------------------------------------------- sheets over inputs


def test_query_sheet_never_replaces_a_gallery_image_or_the_weights(index, trained_run, prepared_tiny, tmp_path):
    from personsearch.retrieval.index import GalleryIndex

    gallery = GalleryIndex.open(index)
    image = gallery.image_path(0)
    weights = trained_run / "checkpoints" / "best.safetensors"
    before = tree_digest(gallery.image_root), tree_digest(trained_run)
    for target in (image, weights, trained_run / "config.yaml"):
        assert_input_error(invoke("query", "woman", "--index", index, "--sheet", target), "--sheet")
    assert (tree_digest(gallery.image_root), tree_digest(trained_run)) == before


def test_eval_sheet_never_replaces_the_dataset_or_the_run(trained_run, prepared_tiny, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    data = tmp_path / "prepared"
    shutil.copytree(prepared_tiny, data)
    before = tree_digest(data), tree_digest(run / "checkpoints"), (run / "config.yaml").read_bytes()
    for target in (data / "manifest.json", run / "config.yaml", run / "checkpoints" / "best.safetensors"):
        assert_input_error(invoke("eval", run, "--data", data, "--device", "cpu", "--sheet", target), "--sheet")
    assert (tree_digest(data), tree_digest(run / "checkpoints"), (run / "config.yaml").read_bytes()) == before
    for _ in range(2):  # a new PNG in the run folder is fine, and so is writing it again
        result = invoke("eval", run, "--data", data, "--device", "cpu", "--sheet", run / "sheet.png", "--json")
        assert result.exit_code == 0, result.output


def test_oversized_sheets_are_refused(index):
    from PIL import Image

    from personsearch.sheet import MAX_SHEET_TILES, SheetRow, SheetTile, render_contact_sheet

    result = invoke("query", "woman", "--index", index, "-k", str(MAX_SHEET_TILES + 1), "--sheet", "/tmp/never.png")
    assert_input_error(result, "-k")
    assert not Path("/tmp/never.png").exists()
    tile = SheetTile(Image.new("RGB", (4, 4)))
    with pytest.raises(ValueError, match="too large"):
        render_contact_sheet([SheetRow("x", [tile] * 20_000)] * 20)


# ------------------------------------------------------------------------------- weights files


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "fifo-safetensors"])
def test_special_weights_files_are_refused_without_reading(tmp_path, kind):
    from personsearch.errors import InputError
    from personsearch.model import load_clip

    path = tmp_path / ("w.safetensors" if kind.endswith("safetensors") else "w.pt")
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        os.mkfifo(path)
    with pytest.raises(InputError, match="not a regular file"):
        load_clip(path, image_size=(64, 32))


def test_explain_mask_refuses_a_fifo_as_weights(tmp_path):
    fifo = tmp_path / "clip.pt"
    os.mkfifo(fifo)
    result = _cli("explain-mask", "--weights", fifo, "a woman", timeout=60)
    assert result.returncode == 2, result.stderr
    assert "not a regular file" in result.stderr


@pytest.mark.parametrize("heads", [0, -4, True, "2", None, 10**12])
def test_hf_config_with_odd_head_counts_is_refused(tmp_path, heads):
    from personsearch.errors import InputError
    from personsearch.model import load_clip

    folder = tmp_path / "hf"
    folder.mkdir()
    config = {"vision_config": {"num_attention_heads": heads}, "text_config": {"num_attention_heads": 8}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="num_attention_heads"):
        load_clip(folder, image_size=(64, 32))


def test_zero_attention_heads_never_divide_by_zero():
    from personsearch.errors import InputError
    from personsearch.model.clip import Attention

    with pytest.raises(InputError, match="heads"):
        Attention(64, 0)


# ------------------------------------------------------------------------------ IRRA configs


_BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip([None, *"abcdefgh"], "abcdefghi", strict=True)
)


@pytest.mark.parametrize("key", ["loss_names", "img_size", "stride_size"])
def test_irra_configs_alias_bomb_is_refused_quickly(tmp_path, key):
    from personsearch.errors import InputError
    from personsearch.runs import irra_settings

    config = tmp_path / "configs.yaml"
    value = "[*i, *i]" if key == "img_size" else "*i"
    config.write_text(_BOMB + f"{key}: {value}\n")
    with pytest.raises(InputError, match=key):
        irra_settings(config)


def test_irra_configs_python_tuple_still_loads(tmp_path):
    from personsearch.runs import irra_settings

    config = tmp_path / "configs.yaml"
    config.write_text("img_size: !!python/tuple\n- 384\n- 128\nstride_size: 16\nloss_names: sdm+mlm+id\n")
    settings = irra_settings(config)
    assert tuple(settings.model.image_size) == (384, 128)


# ------------------------------------------------------------ outputs beside inputs and user files


def test_a_marked_index_holding_a_user_file_is_not_replaced(index, trained_run, prepared_tiny, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    (copy / "notes.txt").write_text("mine")
    before = tree_digest(copy)
    for extra in ([], ["--append"]):
        result = invoke("export", trained_run, "--data", prepared_tiny, "--split", "test", "--out", copy, *extra)
        assert_input_error(result, "notes.txt", "did not write")
        assert tree_digest(copy) == before


@pytest.mark.parametrize("where", ["inside", "same", "around"])
def test_export_never_writes_into_or_around_its_gallery(trained_run, tmp_path, where):
    from PIL import Image

    gallery = tmp_path / "gallery" / "cam0"
    gallery.mkdir(parents=True)
    Image.new("RGB", (32, 64), "red").save(gallery / "a.jpg")
    out = {"inside": gallery / "index", "same": gallery, "around": tmp_path / "gallery"}[where]
    before = tree_digest(tmp_path / "gallery")
    result = invoke("export", trained_run, "--images", gallery, "--out", out)
    assert_input_error(result, "input folder")
    assert tree_digest(tmp_path / "gallery") == before


def test_export_never_writes_into_the_prepared_dataset(trained_run, prepared_tiny, tmp_path):
    prepared = tmp_path / "prep"
    shutil.copytree(prepared_tiny, prepared)
    before = tree_digest(prepared)
    result = invoke("export", trained_run, "--data", prepared, "--split", "test", "--out", prepared / "index")
    assert_input_error(result, "input folder")
    assert tree_digest(prepared) == before


def test_contact_sheets_never_decode_postscript(tmp_path):
    from personsearch.sheet import SheetRow, SheetTile, render_contact_sheet

    eps = tmp_path / "evil.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n(x) print\nshowpage\n")
    out = tmp_path / "sheet.png"
    import personsearch.sheet as sheet

    seen = []
    real = sheet.Image.open

    def spy(fp, mode="r", formats=None):
        seen.append(formats)
        return real(fp, mode, formats)

    sheet.Image.open = spy
    try:
        render_contact_sheet([SheetRow("q", [SheetTile(eps, "0.5", "green")])], out, title="t")
    finally:
        sheet.Image.open = real
    assert out.is_file()
    assert seen and all(formats is not None and "EPS" not in formats for formats in seen)


def test_error_messages_cannot_drive_the_terminal(tmp_path):
    result = invoke("query", "x", "--index", str(tmp_path / "a\x1b[2Jb[/]"))
    assert_input_error(result)
    assert "\x1b" not in result.output and "\\x1b[2Jb[/]" in result.output
