"""``export``, ``query`` and ``eval`` trusted with nothing: an output folder the user owns is never
replaced, index paths never leave the image root, every bad input (unwritable output, odd file
names, special files, a damaged or tampered index) is one clear message, and two writers of one
index never both add the same files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.helpers import tree_digest

from ._support import assert_input_error, cli_process, invoke

pytestmark = pytest.mark.faults


def _images(folder: Path, names: list[str]) -> list[Path]:
    paths = []
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 64), (50 * i % 256, 90, 200 - 30 * i % 200)).save(path)
        paths.append(path)
    return paths


def _export(run: Path, images: Path, out: Path, *extra: str):  # noqa: ANN202
    return invoke("--quiet", "export", run, "--images", images, "--out", out, "--json", *extra)


@pytest.fixture(scope="module")
def folder_index(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of a four-image folder (the folder sits beside it)."""
    base = tmp_path_factory.mktemp("trust")
    _images(base / "gallery", ["cam0/a.jpg", "cam0/b.jpg", "cam1/c.jpg", "cam1/d.jpg"])
    result = _export(trained_run, base / "gallery", base / "index")
    assert result.exit_code == 0, result.output
    return base / "index"


def _copy(index: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    return copy


def _query(index: Path, *extra: str):  # noqa: ANN202
    return invoke("query", "woman in a red coat", "--index", index, "-k", "2", "--json", *extra)


def _rewrite(index: Path, name: str, data: bytes) -> None:
    """Replace one shard file and record its new size and checksum, as a careful tamperer would."""
    (index / name).write_bytes(data)
    header = json.loads((index / "header.json").read_text())
    for shard in header["shards"]:
        for kind in ("embeddings", "metadata"):
            if shard[kind] == name:
                shard[f"{kind}_bytes"] = len(data)
                shard[f"{kind}_sha256"] = hashlib.sha256(data).hexdigest()
    (index / "header.json").write_text(json.dumps(header))


def _rows(index: Path) -> list[dict]:
    return [json.loads(line) for line in (index / "shard-00000.jsonl").read_text().splitlines()]


def _write_rows(index: Path, rows: list) -> None:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    _rewrite(index, "shard-00000.jsonl", text.encode())


# ------------------------------------------------------------------ nothing the user owns is replaced


@pytest.mark.parametrize("header", ["junk", "lookalike", "copied"])
@pytest.mark.parametrize("append", [False, True], ids=["export", "append"])
def test_a_folder_holding_a_header_json_is_not_replaced(trained_run, folder_index, tmp_path, header, append):
    gallery = tmp_path / "gallery"
    _images(gallery, ["x.jpg"])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("three years of work")
    (mine / "plots").mkdir()
    (mine / "plots" / "fig1.png").write_bytes(b"png")
    if header == "junk":
        (mine / "header.json").write_text("my own notes, not JSON")
    elif header == "lookalike":
        (mine / "header.json").write_text(json.dumps({"format": "personsearch-index", "format_version": 1}))
    else:  # a real index header copied in, and even its shard files: the other files are still the user's
        for name in ("header.json", "shard-00000.npy", "shard-00000.jsonl"):
            shutil.copyfile(folder_index / name, mine / name)
    before = tree_digest(mine)
    result = _export(trained_run, gallery, mine, *(["--append"] if append else []))
    assert_input_error(result, str(mine), "refusing")
    assert tree_digest(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery", "mine"]  # no temporaries left


def test_an_index_carries_the_owner_marker_and_an_older_unmarked_one_is_still_ours(trained_run, tmp_path):
    from personsearch.io import owner_kind

    gallery = tmp_path / "gallery"
    _images(gallery, ["a.jpg", "b.jpg"])
    index = tmp_path / "index"
    assert _export(trained_run, gallery, index).exit_code == 0
    assert owner_kind(index) == "gallery-index"
    (index / ".personsearch.json").unlink()  # as written before markers existed
    result = _export(trained_run, gallery, index)
    assert result.exit_code == 0, result.output
    assert owner_kind(index) == "gallery-index"
    (index / ".personsearch.json").unlink()
    (index / "my-notes.txt").write_text("mine")  # an unmarked folder with anything else in it is not ours
    before = tree_digest(index)
    assert_input_error(_export(trained_run, gallery, index), "refusing")
    assert tree_digest(index) == before


# ------------------------------------------------------------------ nothing escapes its folder


@pytest.mark.parametrize(
    "path", ["../secret.png", "cam0/../../secret.png", "/tmp/secret.png", "cam0/a\x00.jpg", "./cam0/a.jpg", ""],
    ids=["dotdot", "inner-dotdot", "absolute", "nul", "dot", "empty"],
)
def test_a_tampered_path_refuses_the_index_before_any_pixel_is_read(folder_index, tmp_path, path):
    from personsearch.errors import InputError
    from personsearch.retrieval.index import GalleryIndex

    Image.new("RGB", (32, 64), (255, 0, 255)).save(folder_index.parent / "secret.png")
    index = _copy(folder_index, tmp_path)
    rows = _rows(index)
    rows[0]["path"] = path.replace("/tmp/secret.png", str(folder_index.parent / "secret.png"))
    _write_rows(index, rows)
    sheet = tmp_path / "sheet.png"
    assert_input_error(_query(index, "--sheet", sheet), "damaged or was tampered with", "shard-00000.jsonl")
    assert not sheet.exists()
    for verify in (True, False):
        with pytest.raises(InputError, match="tampered"):
            GalleryIndex.open(index, verify=verify)


@pytest.mark.parametrize("link", ["file", "folder"])
def test_a_symbolic_link_out_of_the_image_root_refuses_the_index(trained_run, tmp_path, link):
    from personsearch.errors import InputError
    from personsearch.retrieval.index import GalleryIndex

    gallery = tmp_path / "gallery"
    _images(gallery, ["cam0/a.jpg", "cam1/b.jpg"])
    index = tmp_path / "index"
    assert _export(trained_run, gallery, index).exit_code == 0
    private = tmp_path / "private"
    _images(private, ["a.jpg", "b.jpg"])
    if link == "file":
        (gallery / "cam0" / "a.jpg").unlink()
        (gallery / "cam0" / "a.jpg").symlink_to(private / "a.jpg")
    else:
        shutil.rmtree(gallery / "cam1")
        (gallery / "cam1").symlink_to(private)
    sheet = tmp_path / "sheet.png"
    assert_input_error(_query(index, "--sheet", sheet), "tampered", "outside the image root")
    assert not sheet.exists()
    with pytest.raises(InputError, match="outside the image root"):
        GalleryIndex.open(index, verify=False)


def test_image_path_is_the_safe_way_from_a_row_to_a_file(folder_index):
    from personsearch.retrieval.index import GalleryIndex

    index = GalleryIndex.open(folder_index)
    root = os.path.realpath(index.image_root)
    for row in range(len(index)):
        path = index.image_path(row)
        assert path.is_absolute() and str(path).startswith(root + os.sep) and path.is_file()
        assert path == Path(os.path.realpath(index.image_root / index.entry(row).path))
    with pytest.raises(IndexError):
        index.image_path(len(index))
    with pytest.raises(IndexError):
        index.image_path(-1)


# ------------------------------------------------------------------ every bad input is one clear message


def _forbid(monkeypatch, target: str) -> None:  # noqa: ANN001
    def boom(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError(f"{target} ran before the output was checked")

    monkeypatch.setattr(target, boom)


def _unwritable(tmp_path: Path, kind: str) -> Path:
    if kind == "under-a-file":
        (tmp_path / "plain.txt").write_text("a file")
        return tmp_path / "plain.txt" / "out"
    return Path(f"/{kind}/personsearch-test/out")


UNWRITABLE = ["under-a-file", "proc", "sys"]


@pytest.mark.parametrize("kind", UNWRITABLE)
def test_export_refuses_an_unwritable_out_before_loading_the_model(trained_run, tmp_path, monkeypatch, kind):
    gallery = tmp_path / "gallery"
    _images(gallery, ["a.jpg"])
    _forbid(monkeypatch, "personsearch.runs.load_trained")
    out = _unwritable(tmp_path, kind)
    assert_input_error(_export(trained_run, gallery, out), "--out")
    assert_input_error(_export(trained_run, gallery, out, "--append"), "--out")


@pytest.mark.parametrize("kind", [*UNWRITABLE, "folder", "fifo"])
def test_query_refuses_an_unwritable_sheet_before_searching(folder_index, tmp_path, monkeypatch, kind):
    _forbid(monkeypatch, "personsearch.retrieval.query.encode_queries")
    if kind == "folder":
        sheet = tmp_path
    elif kind == "fifo":
        sheet = tmp_path / "sheet.png"
        os.mkfifo(sheet)
    else:
        sheet = _unwritable(tmp_path, kind).with_suffix(".png")
    assert_input_error(_query(folder_index, "--sheet", sheet), "--sheet")


def test_query_never_writes_its_sheet_into_the_index(folder_index, tmp_path):
    index = _copy(folder_index, tmp_path)
    before = tree_digest(index)
    for target in (index / "header.json", index / "shard-00000.npy", index / "new.png"):
        assert_input_error(_query(index, "--sheet", target), "--sheet", "inside the index")
    assert tree_digest(index) == before


@pytest.mark.parametrize("kind", [*UNWRITABLE, "folder"])
def test_eval_refuses_an_unwritable_sheet_before_evaluating(trained_run, tmp_path, monkeypatch, kind):
    _forbid(monkeypatch, "personsearch.engine.evaluate.evaluate_split")
    sheet = tmp_path if kind == "folder" else _unwritable(tmp_path, kind).with_suffix(".png")
    before = tree_digest(trained_run)
    assert_input_error(invoke("eval", trained_run, "--sheet", sheet, "--json"), "--sheet")
    assert tree_digest(trained_run) == before


def test_file_names_that_are_not_utf8_are_skipped_and_reported(trained_run, tmp_path):
    gallery = tmp_path / "gallery"
    good = _images(gallery, ["ok0.jpg", "ok1.jpg"])
    raw = os.fsencode(gallery)
    shutil.copyfile(good[0], raw + b"/\xff\xfe.jpg")
    os.mkdir(raw + b"/cam\xe9")
    shutil.copyfile(good[1], raw + b"/cam\xe9/inner.jpg")
    before = tree_digest(gallery)
    index = tmp_path / "index"
    result = _export(trained_run, gallery, index)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    report = json.loads(result.stdout_bytes.decode("utf-8"))  # strict UTF-8
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"\ufffd\ufffd.jpg", "cam\ufffd/"} and all("UTF-8" in r for r in skipped.values())
    assert report["indexed"] == report["total"] == 2
    for name in ("header.json", "shard-00000.jsonl"):
        (index / name).read_bytes().decode("utf-8")
    again = _export(trained_run, gallery, index, "--append")  # an append meets the same names calmly
    assert again.exit_code == 0 and json.loads(again.stdout)["unchanged"] == 2, again.output
    assert tree_digest(gallery) == before


def _special_gallery(gallery: Path, tmp_path: Path) -> dict[str, str]:
    """Good images plus every kind of special file named like an image; returns the expected
    skip reasons (a word each)."""
    _images(gallery, ["ok.jpg", "dir.jpg/inner.jpg"])  # a folder named like an image is walked
    expected = {}
    os.mkfifo(gallery / "pipe.jpg")
    expected["pipe.jpg"] = "regular"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(gallery / "sock.png"))
    expected["sock.png"] = "regular"
    try:
        os.mknod(gallery / "zero.jpg", 0o600 | 0o020000, os.makedev(1, 5))  # a character device
        expected["zero.jpg"] = "regular"
    except (PermissionError, OSError):
        pass
    (gallery / "devzero.jpg").symlink_to("/dev/zero")
    expected["devzero.jpg"] = "outside"
    (gallery / "loop.jpg").symlink_to(gallery / "loop.jpg")
    expected["loop.jpg"] = "loop"
    (gallery / "ping.jpg").symlink_to(gallery / "pong.jpg")
    (gallery / "pong.jpg").symlink_to(gallery / "ping.jpg")
    expected["ping.jpg"] = expected["pong.jpg"] = "loop"
    return expected


def test_special_files_are_listed_without_being_opened(tmp_path):
    from personsearch.retrieval.export import discover_images

    gallery = tmp_path / "gallery"
    expected = _special_gallery(gallery, tmp_path)
    files, skipped = discover_images(gallery)
    assert [f.relative_to(gallery).as_posix() for f in files] == ["dir.jpg/inner.jpg", "ok.jpg"]
    reasons = dict(skipped)
    assert set(reasons) == set(expected)
    for name, word in expected.items():
        assert word in reasons[name], (name, reasons[name])


def test_export_with_special_files_finishes_and_reports_them(trained_run, tmp_path):
    gallery = tmp_path / "gallery"
    expected = _special_gallery(gallery, tmp_path)
    index = tmp_path / "index"
    process = cli_process("--quiet", "export", trained_run, "--images", gallery, "--out", index, "--json")
    try:
        stdout, stderr = process.communicate(timeout=240)
    except Exception:
        process.kill()
        process.communicate()
        raise AssertionError("export hung on a special file") from None
    assert process.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert {s["path"] for s in report["skipped"]} == set(expected)
    assert report["indexed"] == 2


def _unblock(fifo: Path) -> None:
    """Give a reader stuck on ``fifo`` its end of file (only needed by the old code)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def _within(seconds: float, fifo: Path, call):  # noqa: ANN001, ANN202
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("value", call()), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        _unblock(fifo)
        thread.join(10)
        raise AssertionError(f"reading {fifo} blocked")
    return box["value"]


def test_a_fifo_swapped_in_after_discovery_is_not_read(tmp_path):
    from personsearch.data.datasets import ImageFiles, Unreadable
    from personsearch.data.transforms import build_transform
    from personsearch.sheet import SheetRow, SheetTile, render_contact_sheet

    fifo = tmp_path / "late.jpg"
    os.mkfifo(fifo)
    dataset = ImageFiles([fifo], build_transform((64, 32)))
    item = _within(10, fifo, lambda: dataset[0])
    assert isinstance(item, Unreadable) and "regular" in item.reason
    sheet = _within(10, fifo, lambda: render_contact_sheet([SheetRow("q", [SheetTile(fifo)])], tmp_path / "s.png"))
    assert sheet.width > 0 and (tmp_path / "s.png").is_file()


HEADER_DAMAGE = {
    "count-string": lambda h: h.update(count=str(h["count"])),
    "dim-negative": lambda h: h.update(dim=-1),
    "dim-huge": lambda h: h.update(dim=10**9),
    "dim-float": lambda h: h.update(dim=float(h["dim"])),
    "shards-object": lambda h: h.update(shards={}),
    "shards-string": lambda h: h.update(shards="shard-00000.npy"),
    "shard-not-object": lambda h: h["shards"].__setitem__(0, 7),
    "rows-string": lambda h: h["shards"][0].update(rows=str(h["shards"][0]["rows"])),
    "bytes-string": lambda h: h["shards"][0].update(embeddings_bytes=str(h["shards"][0]["embeddings_bytes"])),
    "bytes-beyond-int64": lambda h: h["shards"][0].update(metadata_bytes=2**70),
    "count-beyond-int64": lambda h: h.update(count=2**64),
    "missing-dim": lambda h: h.pop("dim"),
    "missing-shards": lambda h: h.pop("shards"),
    "missing-sha": lambda h: h["shards"][0].pop("embeddings_sha256"),
    "shard-outside": lambda h: h["shards"][0].update(embeddings="../index2/shard-00000.npy"),
    "shard-absolute": lambda h: h["shards"][0].update(metadata="/etc/passwd"),
    "model-list": lambda h: h.update(model=[1, 2]),
    "faiss-string": lambda h: h.update(faiss="faiss-00000.index"),
    "faiss-outside": lambda h: h.update(faiss={"file": "../x.index", "sha256": "0" * 64}),
    "root-number": lambda h: h.update(image_root=5),
    "root-relative": lambda h: h.update(image_root="gallery"),
    "fingerprint-object": lambda h: h.update(model_fingerprint={"a": 1}),
    "version-bool": lambda h: h.update(format_version=True),
}


@pytest.mark.parametrize("damage", sorted(HEADER_DAMAGE))
def test_a_header_with_wrong_field_types_is_one_message(folder_index, tmp_path, damage):
    index = _copy(folder_index, tmp_path)
    header = json.loads((index / "header.json").read_text())
    HEADER_DAMAGE[damage](header)
    (index / "header.json").write_text(json.dumps(header))
    before = tree_digest(index)
    assert_input_error(_query(index), "damaged", "header.json", "re-export")
    assert tree_digest(index) == before


@pytest.mark.parametrize(
    "text",
    [
        '{"format": "personsearch-index", "format_version": 1, "dim": NaN}',
        '{"format": "personsearch-index", "format_version": 1, "dim": Infinity}',
        '{"format": "personsearch-index", "format_version": 1, "dim": 1e999}',
        '{"format": "personsearch-index", "format_version": 1, "count": ' + "9" * 5000 + "}",
        '{"format": "personsearch-index", "deep": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "\ufeff{}",
    ],
    ids=["nan", "infinity", "float-overflow", "5000-digits", "deep", "bom"],
)
def test_a_header_json_python_cannot_hold_is_one_message(folder_index, tmp_path, text):
    index = _copy(folder_index, tmp_path)
    (index / "header.json").write_text(text)
    assert_input_error(_query(index), "damaged", "header.json")


def test_a_header_that_is_a_fifo_is_not_read(folder_index, tmp_path):
    index = _copy(folder_index, tmp_path)
    (index / "header.json").unlink()
    os.mkfifo(index / "header.json")
    result = _within(60, index / "header.json", lambda: _query(index))
    assert_input_error(result, "damaged", "header.json", "not a regular file")


METADATA_DAMAGE = {
    "size-string": lambda rows: rows[0].update(size=str(rows[0]["size"])),
    "mtime-float": lambda rows: rows[0].update(mtime_ns=rows[0]["mtime_ns"] + 0.5),
    "pid-string": lambda rows: rows[0].update(pid="seven"),
    "pid-bool": lambda rows: rows[0].update(pid=True),
    "path-number": lambda rows: rows[0].update(path=5),
    "path-missing": lambda rows: rows[0].pop("path"),
    "size-negative": lambda rows: rows[0].update(size=-1),
    "size-beyond-int64": lambda rows: rows[0].update(size=2**64),
    "row-list": lambda rows: rows.__setitem__(0, [1, 2]),
    "row-null": lambda rows: rows.__setitem__(0, None),
    "extra-row": lambda rows: rows.append(dict(rows[0])),
}


@pytest.mark.parametrize("damage", sorted(METADATA_DAMAGE))
def test_shard_metadata_with_wrong_types_is_one_message(folder_index, tmp_path, damage):
    index = _copy(folder_index, tmp_path)
    rows = _rows(index)
    METADATA_DAMAGE[damage](rows)
    _write_rows(index, rows)
    assert_input_error(_query(index), "damaged", "shard-00000.jsonl", "re-export")


@pytest.mark.parametrize(
    "line", [b'{"path": "cam0/\xff.jpg", "pid": null, "size": 1, "mtime_ns": 1}',
             b'{"path": "cam0/a.jpg", "pid": null, "size": ' + b"9" * 5000 + b', "mtime_ns": 1}',
             b"[" * 100_000],
    ids=["not-utf8", "5000-digits", "deep"],
)
def test_shard_metadata_python_cannot_read_is_one_message(folder_index, tmp_path, line):
    index = _copy(folder_index, tmp_path)
    lines = (index / "shard-00000.jsonl").read_bytes().splitlines()
    lines[1] = line
    _rewrite(index, "shard-00000.jsonl", b"\n".join(lines) + b"\n")
    assert_input_error(_query(index), "damaged", "shard-00000.jsonl")


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["wider", "fewer-rows", "float32", "fortran", "objects", "garbage"])
def test_embeddings_of_the_wrong_size_or_kind_are_one_message(folder_index, tmp_path, kind):
    index = _copy(folder_index, tmp_path)
    good = np.load(index / "shard-00000.npy")
    rows, dim = good.shape
    data = {
        "wider": lambda: _npy(np.zeros((rows, dim + 1), np.float16)),
        "fewer-rows": lambda: _npy(good[:-1].copy()),
        "float32": lambda: _npy(good.astype(np.float32)),
        "fortran": lambda: _npy(np.asfortranarray(np.ones((rows, dim), np.float16))),
        "objects": lambda: _npy(np.array([{"a": 1}] * rows, dtype=object)),
        "garbage": lambda: b"\x93NUMPY\x01\x00\x76\x00{'descr': <f2', 'fortran_order': False, 'shape': (" + b"9" * 200,
    }[kind]()
    _rewrite(index, "shard-00000.npy", data)
    for verify in ([], ["--no-verify"]):
        assert_input_error(_query(index, *verify), "damaged", "shard-00000.npy")


# ------------------------------------------------------------------ two writers, one index


@pytest.mark.parametrize("second", ["append", "export"])
def test_two_writers_never_add_the_same_files(trained_run, tmp_path, second):
    """The first append has read the header and decided what is new when a second writer comes:
    the second is refused (the lock is held for the whole append), so each file is indexed once."""
    from personsearch.errors import InputError
    from personsearch.retrieval.export import export_images
    from personsearch.retrieval.index import GalleryIndex
    from personsearch.runs import load_trained

    gallery = tmp_path / "gallery"
    _images(gallery, ["a0.jpg", "a1.jpg", "a2.jpg"])
    index = tmp_path / "index"
    assert _export(trained_run, gallery, index).exit_code == 0
    _images(gallery / "new", ["b0.jpg", "b1.jpg"])

    decided, other_done = threading.Event(), threading.Event()
    box: dict = {}

    def hold(_: int) -> None:
        decided.set()
        assert other_done.wait(120)

    def first() -> None:
        try:
            box["first"] = export_images(load_trained(trained_run), index, images=gallery, append=True, on_total=hold)
        except BaseException as exc:  # noqa: BLE001 - reported below
            box["first"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert decided.wait(120)
        try:
            box["second"] = export_images(load_trained(trained_run), index, images=gallery, append=second == "append")
        except InputError as exc:
            box["second"] = exc
    finally:
        other_done.set()
        thread.join(240)
    assert not isinstance(box["first"], BaseException), box["first"]
    if isinstance(box["second"], InputError):
        assert "in use" in box["second"].message
    paths = [entry.path for entry in GalleryIndex.open(index).entries()]
    assert sorted(paths) == ["a0.jpg", "a1.jpg", "a2.jpg", "new/b0.jpg", "new/b1.jpg"]
    assert not (index / ".lock").exists()
