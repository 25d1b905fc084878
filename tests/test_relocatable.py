"""A tree of prepared data, a run and its indexes moved or copied elsewhere keeps working (issue 16,
snag 3): the files record their paths relative to their own folder too (``personsearch.io.recorded``),
files written before are read as they are, and a part moved alone is one clear message."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from tests.helpers import TINY_SETS
from typer.testing import CliRunner

runner = CliRunner()
QUERY = "a woman in a red coat"


def invoke(*args: Any):  # noqa: ANN201
    from personsearch.cli.app import app

    return runner.invoke(app, [str(arg) for arg in args])


def ok(result) -> Any:  # noqa: ANN001
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if result.stdout.lstrip().startswith(("{", "[")) else None


def real(path: Path) -> str:
    return os.path.realpath(path)


@pytest.fixture(scope="module")
def pristine(synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A tree made by the verbs, then renamed, so the place it was made at no longer exists:
    ``raw/`` (the synthetic set), ``prep/`` (prepared from it), ``runs/tiny`` (trained on it, two
    steps), ``runs/tiny/index`` (its test split exported), ``photos/`` and ``photos-index/`` (a
    plain folder exported). READ-ONLY: tests work on copies. Returns the tree and what was
    recorded while it stood at its first place (fingerprints, that place)."""
    from personsearch.data.prepared import PreparedDataset
    from personsearch.runs import load_trained

    base = tmp_path_factory.mktemp("relocatable")
    site = base / "built-here"
    shutil.copytree(synthetic_raw, site / "raw")
    ok(invoke("prepare", "CUHK-PEDES", "--root", site / "raw", "--out", site / "prep", "--json"))
    sets = [*TINY_SETS, "model.arch.vision_heads=1", "model.arch.text_heads=1", f"runtime.output_dir={site / 'runs'}"]
    ok(invoke("train", "--data", site / "prep", "--name", "tiny", "--max-steps", "2", "--json",
              *[arg for item in sets for arg in ("--set", item)]))
    run = site / "runs" / "tiny"
    ok(invoke("export", run, "--data", site / "prep", "--split", "test", "--out", run / "index", "--device", "cpu",
              "--json"))
    photos = sorted((site / "raw").rglob("*.jpg"))[:4]
    for number, photo in enumerate(photos):
        (site / "photos" / f"cam{number % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, site / "photos" / f"cam{number % 2}" / photo.name)
    ok(invoke("export", run, "--images", site / "photos", "--out", site / "photos-index", "--device", "cpu", "--json"))
    info = {"first_place": site, "model": load_trained(run).fingerprint,
            "data": PreparedDataset.load(site / "prep").fingerprint}
    tree = base / "tree"
    site.rename(tree)  # the first place is gone: nothing may still lead there
    return tree, info


def copy_tree(pristine: tuple[Path, dict[str, Any]], dest: Path) -> Path:
    shutil.copytree(pristine[0], dest, symlinks=True)
    return dest


@pytest.fixture()
def sheet_tiles(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """The images contact sheets draw, and the placeholders ("unreadable" tiles) they draw instead."""
    import personsearch.sheet as sheet

    seen: dict[str, list] = {"tiles": [], "placeholders": []}
    load, placeholder = sheet._load, sheet._placeholder

    def spy_load(tile, *args):  # noqa: ANN001, ANN202
        seen["tiles"].append(tile.image)
        return load(tile, *args)

    def spy_placeholder(*args):  # noqa: ANN202
        seen["placeholders"].append(args)
        return placeholder(*args)

    monkeypatch.setattr(sheet, "_load", spy_load)
    monkeypatch.setattr(sheet, "_placeholder", spy_placeholder)
    return seen


@contextmanager
def warnings_logged() -> Iterator[list[str]]:
    """The warnings the library logs meanwhile (the CLI stops its logger propagating to pytest's)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("personsearch")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


# ------------------------------------------------------------------ what the files record


def test_the_files_record_their_paths_relative_to_their_folder(pristine):
    tree, info = pristine
    first = real(info["first_place"])
    manifest = json.loads((tree / "prep" / "manifest.json").read_text())
    assert manifest["relative"] == {"raw_root": "../raw"}
    assert manifest["raw_root"] == os.path.join(first, "raw")  # the absolute path, as every version wrote it
    config = yaml.safe_load((tree / "runs" / "tiny" / "config.yaml").read_text())
    assert config["data"]["root"] == "../../prep"  # a settings file has room for one value: the relative one
    header = json.loads((tree / "runs" / "tiny" / "index" / "header.json").read_text())
    assert header["relative"] == {"image_root": "../../../raw", "model.run": "..",
                                  "model.weights": "../checkpoints/best.safetensors", "model.data": "../../../prep"}
    assert header["image_root"] == os.path.join(first, "raw")
    photos = json.loads((tree / "photos-index" / "header.json").read_text())
    assert photos["relative"] == {"image_root": "../photos", "model.run": "../runs/tiny",
                                  "model.weights": "../runs/tiny/checkpoints/best.safetensors",
                                  "model.images": "../photos"}


# ------------------------------------------------------------------ moved together: everything works


def test_a_copied_tree_works_where_it_was_made_is_gone(pristine, tmp_path, sheet_tiles):
    from personsearch.data.prepared import PreparedDataset
    from personsearch.retrieval.index import GalleryIndex
    from personsearch.runs import load_run_settings, load_trained

    tree = copy_tree(pristine, tmp_path / "elsewhere" / "tree")
    info = pristine[1]
    assert not info["first_place"].exists()
    run = tree / "runs" / "tiny"
    prepared = PreparedDataset.load(tree / "prep")
    assert prepared.raw_root == Path(real(tree / "raw")) and prepared.fingerprint == info["data"]
    assert load_run_settings(run).data.root == real(tree / "prep")
    model = load_trained(run)
    assert model.fingerprint == info["model"]  # weights + preprocessing: paths never enter it

    report = ok(invoke("eval", run, "--sheet", tmp_path / "eval.png", "--device", "cpu", "--json"))
    assert report["skipped_images"] == 0 and report["data"] == info["data"]
    assert sheet_tiles["tiles"] and not sheet_tiles["placeholders"]

    index = GalleryIndex.open(run / "index")
    assert index.image_root == Path(real(tree / "raw")) and index.model_fingerprint == info["model"]
    assert index.model_info["run"] == real(run) and index.model_info["data"] == real(tree / "prep")
    sheet_tiles["tiles"].clear()
    found = ok(invoke("query", QUERY, "--index", run / "index", "-k", "3", "--sheet", tmp_path / "q.png", "--json"))
    assert len(found["results"]) == 3 and len(sheet_tiles["tiles"]) == 3 and not sheet_tiles["placeholders"]
    assert all(str(tile).startswith(real(tree / "raw") + os.sep) for tile in sheet_tiles["tiles"])

    sheet_tiles["tiles"].clear()
    photos = tree / "photos-index"
    ok(invoke("query", QUERY, "--index", photos, "-k", "2", "--sheet", tmp_path / "p.png", "--json"))
    assert len(sheet_tiles["tiles"]) == 2 and not sheet_tiles["placeholders"]
    Image.new("RGB", (32, 64), (10, 200, 30)).save(tree / "photos" / "cam0" / "new.jpg")
    appended = ok(invoke("export", run, "--images", tree / "photos", "--out", photos, "--append", "--device", "cpu",
                         "--json"))
    assert appended["indexed"] == 1 and appended["unchanged"] == 4


def test_records_written_before_relative_paths_are_read_as_they_are(pristine, tmp_path, sheet_tiles):
    """Absolute paths only, as every file was written before (here: pointing at the copy)."""
    from personsearch.data.prepared import PreparedDataset
    from personsearch.retrieval.index import GalleryIndex
    from personsearch.runs import load_run_settings

    tree = copy_tree(pristine, tmp_path / "old")
    run = tree / "runs" / "tiny"
    manifest_file = tree / "prep" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    del manifest["relative"]
    manifest["raw_root"] = real(tree / "raw")
    manifest_file.write_text(json.dumps(manifest, indent=1))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["root"] = real(tree / "prep")
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for folder, root in ((run / "index", tree / "raw"), (tree / "photos-index", tree / "photos")):
        header = json.loads((folder / "header.json").read_text())
        relative = header.pop("relative")
        header["image_root"] = real(root)
        for key in relative:
            if key.startswith("model."):
                header["model"][key[6:]] = real(folder / relative[key])
        (folder / "header.json").write_text(json.dumps(header))

    assert PreparedDataset.load(tree / "prep").raw_root == Path(real(tree / "raw"))
    assert load_run_settings(run).data.root == real(tree / "prep")
    index = GalleryIndex.open(run / "index")
    assert index.image_root == Path(real(tree / "raw")) and index.model_info["run"] == real(run)
    assert ok(invoke("eval", run, "--device", "cpu", "--json"))["skipped_images"] == 0
    ok(invoke("query", QUERY, "--index", run / "index", "-k", "3", "--sheet", tmp_path / "q.png", "--json"))
    assert len(sheet_tiles["tiles"]) == 3 and not sheet_tiles["placeholders"]


def test_a_relative_data_root_in_a_settings_file_is_relative_to_the_file(tmp_path, monkeypatch):
    from personsearch.settings import resolve_settings, settings_file_text

    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "mine.yaml"
    config.write_text("data:\n  root: ../data/prep\n")
    monkeypatch.chdir(tmp_path / "configs")
    assert resolve_settings(config=config.name, environ={}).data.root == os.path.join(real(tmp_path), "data", "prep")
    for absolute in ("/srv/data/prep", "~/data/prep"):
        config.write_text(f"data:\n  root: {absolute}\n")
        assert resolve_settings(config=config, environ={}).data.root == absolute
    given = resolve_settings(sets=["data.root=data/prep"], environ={})  # the command line: the current folder
    assert given.data.root == "data/prep"
    text = settings_file_text(given, tmp_path / "runs" / "x")
    assert yaml.safe_load(text)["data"]["root"] == "../../configs/data/prep"


# ------------------------------------------------------------------ moved alone: one clear message


def test_moving_only_the_dataset_names_the_recorded_path(pristine, tmp_path):
    from personsearch.data.prepared import PreparedDataset
    from personsearch.engine.evaluate_run import evaluate_run
    from personsearch.errors import InputError
    from personsearch.retrieval.index import GalleryIndex

    tree = copy_tree(pristine, tmp_path / "tree")
    run = tree / "runs" / "tiny"
    other = tmp_path / "other"
    other.mkdir()
    for name in ("prep", "raw"):
        (tree / name).rename(other / name)

    with pytest.raises(InputError) as refused:
        evaluate_run(run, device="cpu")
    assert os.path.join(real(tree), "prep") in str(refused.value) and "--data" in (refused.value.hint or "")
    result = invoke("eval", run, "--device", "cpu")
    assert result.exit_code == 2 and "prepared dataset not found" in result.output
    assert "Traceback" not in result.output
    assert ok(invoke("eval", run, "--data", other / "prep", "--device", "cpu", "--json"))["skipped_images"] == 0

    with warnings_logged() as warnings:
        index = GalleryIndex.open(run / "index")
    assert index.image_root == Path(real(tree / "raw"))  # neither form exists: where the tree keeps it
    assert any("not where it records them" in text and "'../../../raw'" in text for text in warnings), warnings

    (other / "raw").rename(tmp_path / "raw-elsewhere")  # now the raw images alone are gone as well
    with pytest.raises(InputError) as refused:
        PreparedDataset.load(other / "prep")
    message = str(refused.value)
    assert "'../raw'" in message and os.path.join(real(other), "raw") in message
    assert os.path.join(real(pristine[1]["first_place"]), "raw") in message  # the absolute form, named too
    assert "put the raw dataset back" in (refused.value.hint or "")


# ------------------------------------------------------------------ the trust checks still hold


def test_a_run_inside_the_raw_folder_of_a_moved_dataset_is_still_refused(pristine, tmp_path):
    from personsearch.errors import InputError
    from personsearch.runs import check_outside_inputs

    tree = copy_tree(pristine, tmp_path / "tree")
    with pytest.raises(InputError, match="raw image folder"):
        check_outside_inputs(tree / "raw" / "runs" / "x", tree / "prep")  # found through the relative form


def test_relative_forms_are_checked_and_rows_still_stay_inside_the_image_root(pristine, tmp_path):
    from personsearch.data.prepared import PreparedDataset
    from personsearch.errors import InputError
    from personsearch.retrieval.index import GalleryIndex

    tree = copy_tree(pristine, tmp_path / "tree")
    index = tree / "photos-index"
    header_file = index / "header.json"
    header = json.loads(header_file.read_text())
    for bad in ({"image_root": "/etc"}, {"image_root": ""}, {"anything": "x"}, ["../photos"],
                {"image_root": "~/photos"}, {"model.run": 5}):
        header_file.write_text(json.dumps({**header, "relative": bad}))
        with pytest.raises(InputError, match="tampered"):
            GalleryIndex.open(index)
    # A relative form leading to another folder gives no new power: rows still stay inside it.
    private = tmp_path / "private"
    private.mkdir()
    Image.new("RGB", (8, 8)).save(private / "secret.jpg")
    decoy = tree / "decoy"
    shutil.copytree(tree / "photos", decoy)
    row = json.loads((index / "shard-00000.jsonl").read_text().splitlines()[0])["path"]
    (decoy / row).unlink()
    (decoy / row).symlink_to(private / "secret.jpg")
    header_file.write_text(json.dumps({**header, "relative": {"image_root": "../decoy"}}))
    with pytest.raises(InputError, match="outside the image root"):
        GalleryIndex.open(index)

    manifest_file = tree / "prep" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    for bad in ({"raw_root": "/etc"}, {"raw_root": ""}, {"raw_root": "../raw", "other": "x"}, "../raw"):
        manifest_file.write_text(json.dumps({**manifest, "relative": bad}))
        with pytest.raises(InputError, match="damaged"):
            PreparedDataset.load(tree / "prep")
