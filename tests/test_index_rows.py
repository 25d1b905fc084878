"""Gallery index row tables: a large index is opened without reading its metadata, rows are read
by offset and checked, superseded rows are kept at write time, appends decide on keys, damage in
any new file is one clear message, and a version-1 index still opens and is upgraded by an append."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from personsearch.errors import InputError
from personsearch.retrieval import GalleryIndex, IndexEntry, append_to_index, files_to_embed, index_rows, write_index
from personsearch.retrieval import gallery as gallery_module

DIM = 16


def _entries(n: int, start: int = 0) -> list[dict]:
    return [{"path": f"cam{i % 3}/img{i:05d}.jpg", "pid": i % 7, "size": 100 + i, "mtime_ns": 11 * i}
            for i in range(start, start + n)]


def _gallery(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture
def lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Open every index as a large one is opened (no whole check)."""
    monkeypatch.setattr(gallery_module, "CHECK_ALL_ROWS", 0)


@pytest.fixture
def built(tmp_path: Path) -> Path:
    write_index(tmp_path / "ix", _gallery(120), _entries(120), "fp", tmp_path, shard_size=50)
    return tmp_path / "ix"


def _header(folder: Path) -> dict:
    return json.loads((folder / "header.json").read_text())


def _save_header(folder: Path, header: dict) -> None:
    (folder / "header.json").write_text(json.dumps(header))


def _no_whole_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("a whole metadata file was read")

    monkeypatch.setattr(gallery_module, "read_shard", refuse)


def test_a_large_index_reads_only_the_rows_asked_for(built, lazy, monkeypatch) -> None:
    _no_whole_reads(monkeypatch)
    seen: list[int] = []
    real = index_rows.read_rows

    def count(folder, shard, lines, local_rows):  # noqa: ANN001, ANN202
        seen.extend(local_rows)
        return real(folder, shard, lines, local_rows)

    monkeypatch.setattr(gallery_module, "read_rows", count)
    index = GalleryIndex.open(built)
    result = index.search(_gallery(120)[[7, 77]], 3)
    assert result.rows[:, 0].tolist() == [7, 77]
    hits = index.metadata(result.rows)
    assert hits[1][0] == IndexEntry("cam2/img00077.jpg", 0, 177, 847)
    assert len(seen) == 6
    assert index.metadata(77).path == "cam2/img00077.jpg" and len(seen) == 6  # kept once read
    with pytest.raises(IndexError):
        index.entry(120)


def test_header_lists_the_tables_and_they_describe_the_metadata(built) -> None:
    header = _header(built)
    assert header["format_version"] == 2 and header["superseded"] is None
    shard = header["shards"][1]
    assert (shard["lines"], shard["keys"]) == ("shard-00001.lines.npy", "shard-00001.keys.npy")
    raw = (built / shard["metadata"]).read_bytes()
    lines = np.load(built / shard["lines"])
    assert lines.dtype == np.int64 and lines.shape == (50, 2) and lines[-1, 0] == len(raw)
    ends = [i + 1 for i, byte in enumerate(raw) if byte == ord("\n")]
    assert lines[:, 0].tolist() == ends
    keys = np.load(built / shard["keys"])
    entry = IndexEntry.from_mapping(_entries(120)[50], "row")
    assert keys[0].tolist() == [index_rows.path_key(entry.path),
                                index_rows.file_key(entry.path, entry.size, entry.mtime_ns)]


@pytest.mark.parametrize("small", [True, False], ids=["checked-whole", "lazy"])
def test_superseded_rows_are_decided_when_written(tmp_path: Path, monkeypatch, small: bool) -> None:
    if not small:
        monkeypatch.setattr(gallery_module, "CHECK_ALL_ROWS", 0)
    entries = _entries(30)
    entries[20] = dict(entries[4], size=5)  # the same path again in one write: row 4 is superseded
    folder = tmp_path / "ix"
    index = write_index(folder, _gallery(30), entries, "fp", tmp_path, shard_size=8)
    assert index.dead_rows().tolist() == [4]
    assert np.load(folder / _header(folder)["superseded"]["file"]).tolist() == [4]
    changed = [dict(entries[20], size=6), dict(entries[9], mtime_ns=1), *_entries(2, start=500),
               dict(entries[9], mtime_ns=2)]
    index = append_to_index(folder, _gallery(5, seed=1), changed, "fp")
    assert index.dead_rows().tolist() == [4, 9, 20, 31]
    assert [d is not None and d.tolist() for d in index.superseded_rows()] == [[4], [1], [4], False, [1]]
    assert not (folder / "superseded-00000.npy").exists() and (folder / "superseded-00001.npy").exists()
    rows = index.search(_gallery(30)[[4, 9, 20]], 35).rows
    assert not set(rows.flatten().tolist()) & {4, 9, 20, 31} and rows.shape == (3, 31)
    reopened = GalleryIndex.open(folder, verify="full")  # the list equals the one derived from every path
    assert reopened.dead_rows().tolist() == [4, 9, 20, 31]


def test_path_key_collisions_never_hide_a_row(tmp_path: Path, lazy, monkeypatch) -> None:
    real = index_rows.entry_keys

    def colliding(entries):  # noqa: ANN001, ANN202 - every path key the same: every row meets every other
        keys = real(entries)
        keys[:, 0] = 1
        return keys

    monkeypatch.setattr(index_rows, "entry_keys", colliding)
    folder = tmp_path / "ix"
    write_index(folder, _gallery(20), _entries(20), "fp", tmp_path, shard_size=8)
    assert np.load(folder / "shard-00001.keys.npy")[:, 0].tolist() == [1] * 8
    index = append_to_index(folder, _gallery(3, seed=2), _entries(3, start=900), "fp")
    assert index.dead_rows().tolist() == []
    index = append_to_index(folder, _gallery(1, seed=3), [dict(_entries(1, start=901)[0], size=1)], "fp")
    assert index.dead_rows().tolist() == [21]


def test_an_append_decides_on_keys_without_reading_rows(built, lazy, tmp_path, monkeypatch) -> None:
    index = GalleryIndex.open(built)
    _no_whole_reads(monkeypatch)
    monkeypatch.setattr(gallery_module, "read_rows", lambda *a: pytest.fail("a metadata row was read"))
    entries = [IndexEntry.from_mapping(e, "row") for e in _entries(122)]
    entries[5] = IndexEntry(entries[5].path, entries[5].pid, 1, entries[5].mtime_ns)
    assert np.flatnonzero(~index.indexed(entries)).tolist() == [5, 120, 121]
    images = tmp_path / "cam0"
    images.mkdir()
    (images / "new.jpg").write_bytes(b"x")
    assert files_to_embed(index, [images / "new.jpg"]) == [images / "new.jpg"]


def test_files_superseded_are_not_indexed_as_they_are(built) -> None:
    entries = _entries(1, start=3)
    append_to_index(built, _gallery(1, seed=4), [dict(entries[0], size=1)], "fp")
    index = GalleryIndex.open(built)
    assert index.indexed([IndexEntry.from_mapping(entries[0], "row")]).tolist() == [False]


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_tampered_row_is_refused_when_read(built, lazy) -> None:
    meta = built / "shard-00000.jsonl"
    text = meta.read_text().replace('"cam0/img00003.jpg"', '"cam0/img00004.jpg"', 1)
    meta.write_text(text)  # same size: the open cannot tell, the row read can
    index = GalleryIndex.open(built)
    assert index.entry(2).path == "cam2/img00002.jpg"
    with pytest.raises(InputError, match=r"damaged or was tampered with: .*shard-00000\.jsonl line 4 does not "
                                         r"match its line table"):
        index.entry(3)
    with pytest.raises(InputError, match="does not match its line table"):
        list(index.entries())


def test_a_shifted_metadata_file_is_refused_when_its_table_is_read(built, lazy) -> None:
    meta = built / "shard-00001.jsonl"
    data = meta.read_bytes().replace(b'"pid": 1', b'"pid": 11', 1)
    meta.write_bytes(data)
    header = _header(built)
    header["shards"][1]["metadata_bytes"] = len(data)  # a careful tamperer
    _save_header(built, header)
    for verify in (True, False):
        index = GalleryIndex.open(built, verify=verify)
        assert index.entry(0).path == "cam0/img00000.jpg"
        with pytest.raises(InputError, match=r"shard-00001\.jsonl is \d+ bytes, but its line table"):
            index.entry(99)
    with pytest.raises(InputError, match=r"shard-00001\.jsonl is corrupt"):
        GalleryIndex.open(built, verify="full")


@pytest.mark.parametrize("name", ["shard-00001.lines.npy", "shard-00002.keys.npy", "superseded-00000.npy"])
def test_damaged_tables_are_one_message(tmp_path: Path, lazy, name: str) -> None:
    entries = _entries(120)
    entries[100] = dict(entries[1])
    folder = tmp_path / "ix"
    write_index(folder, _gallery(120), entries, "fp", tmp_path, shard_size=50)
    _flip(folder / name, (folder / name).stat().st_size - 3)  # the last value's high bytes
    with pytest.raises(InputError, match=rf"damaged or was tampered with: .*{name.replace('.', '[.]')} is corrupt"):
        index = GalleryIndex.open(folder)  # the superseded list is read here, the tables when used
        index.all_keys()
        index.entry(60)
    with pytest.raises(InputError, match="damaged or was tampered with"):
        GalleryIndex.open(folder, verify="full")
    if name.startswith("shard-00001.lines"):  # without hashes, the row read still never returns a wrong row
        index = GalleryIndex.open(folder, verify=False)
        assert index.entry(50).path == "cam2/img00050.jpg"
        with pytest.raises(InputError, match="line 50 does not match its line table"):
            index.entry(99)
    if name.startswith("superseded"):
        with pytest.raises(InputError, match="not sorted rows of the index"):
            GalleryIndex.open(folder, verify=False)


@pytest.mark.parametrize(
    "damage",
    [
        lambda h: h.pop("superseded"),
        lambda h: h.update(superseded={"file": "../x.npy", "rows": 1, "bytes": 1, "sha256": "0" * 64}),
        lambda h: h.update(superseded={"file": "superseded-00000.npy", "rows": 10**6, "bytes": 1, "sha256": "0" * 64}),
        lambda h: h["shards"][0].pop("lines"),
        lambda h: h["shards"][0].update(keys="shard-00000.lines.npy"),
        lambda h: h["shards"][0].update(lines_bytes=-1),
    ],
    ids=["no-superseded", "superseded-outside", "superseded-too-many", "no-lines", "keys-named-lines", "bytes"],
)
def test_header_table_fields_are_checked(built, damage) -> None:
    header = _header(built)
    damage(header)
    _save_header(built, header)
    with pytest.raises(InputError, match="damaged or was tampered with"):
        GalleryIndex.open(built)


def test_superseded_list_out_of_range_is_refused(built, lazy) -> None:
    import hashlib
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([3, 500], dtype="<i8"))
    data = buffer.getvalue()
    (built / "superseded-00000.npy").write_bytes(data)
    header = _header(built)
    header["superseded"] = {"file": "superseded-00000.npy", "rows": 2, "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()}
    _save_header(built, header)
    with pytest.raises(InputError, match="not sorted rows of the index"):
        GalleryIndex.open(built)


def test_full_verify_hashes_everything_and_the_default_only_the_tables(built, lazy) -> None:
    _flip(built / "shard-00001.npy", 300)
    GalleryIndex.open(built)  # embeddings are checked by size and shape only on the quick path
    with pytest.raises(InputError, match=r"shard-00001\.npy is corrupt"):
        GalleryIndex.open(built, verify="full")
    with pytest.raises(InputError, match="verify must be"):
        GalleryIndex.open(built, verify="yes")  # type: ignore[arg-type]


def test_a_link_out_of_the_root_is_refused_when_its_file_is_read(tmp_path: Path, lazy) -> None:
    root = tmp_path / "images"
    (root / "cam0").mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(b"s")
    (root / "cam0" / "a.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "cam0" / "b.jpg").write_bytes(b"b")
    entries = [IndexEntry.for_file(root, root / "cam0" / name) for name in ("a.jpg", "b.jpg")]
    write_index(tmp_path / "ix", _gallery(2), entries, "fp", root)
    index = GalleryIndex.open(tmp_path / "ix")
    assert index.image_path(1) == Path(os.path.realpath(root / "cam0" / "b.jpg"))
    with pytest.raises(InputError, match="outside the image root"):
        index.image_path(0)
    with pytest.raises(InputError, match="outside the image root"):
        GalleryIndex.open(tmp_path / "ix", verify="full")


def _as_version_1(folder: Path) -> None:
    """Turn an index into what the version-1 writer wrote (the same shard files, no tables)."""
    header = _header(folder)
    header["format_version"] = 1
    for name in [header["superseded"]["file"]] if header["superseded"] else []:
        (folder / name).unlink()
    del header["superseded"]
    for shard in header["shards"]:
        for kind in ("lines", "keys"):
            (folder / shard.pop(kind)).unlink()
            del shard[f"{kind}_bytes"], shard[f"{kind}_sha256"]
    _save_header(folder, header)


def test_a_version_1_index_opens_searches_and_is_upgraded_by_an_append(tmp_path: Path) -> None:
    entries = _entries(120)
    entries[90] = dict(entries[10], size=1)
    new = [dict(entries[20], size=2), *_entries(2, start=700)]
    expected = write_index(tmp_path / "v2", _gallery(120), entries, "fp", tmp_path, shard_size=50)
    expected = append_to_index(tmp_path / "v2", _gallery(3, seed=5), new, "fp")
    old = tmp_path / "v1"
    write_index(old, _gallery(120), entries, "fp", tmp_path, shard_size=50)
    _as_version_1(old)
    before = {p.name: p.read_bytes() for p in old.iterdir() if p.name != "header.json"}
    index = GalleryIndex.open(old)
    assert index.header["format_version"] == 1 and index.dead_rows().tolist() == [10]
    rows = index.search(_gallery(120)[[10, 90]], 200).rows
    assert rows.shape == (2, 119) and 10 not in rows.flatten().tolist() and rows[1, 0] == 90
    assert index.indexed([IndexEntry.from_mapping(entries[5], "row")]).tolist() == [True]
    index = append_to_index(old, _gallery(3, seed=5), new, "fp")
    assert index.header["format_version"] == 2 and index.dead_rows().tolist() == [10, 20]
    assert all((old / name).read_bytes() == data for name, data in before.items())
    names = sorted(p.name for p in old.iterdir())
    assert names == sorted(p.name.replace("superseded-00001", "superseded-00000") for p in (tmp_path / "v2").iterdir())
    for name in ("shard-00000.lines.npy", "shard-00001.keys.npy", "shard-00003.keys.npy"):
        assert (old / name).read_bytes() == (tmp_path / "v2" / name).read_bytes(), name
    assert np.load(old / "superseded-00000.npy").tolist() == [10, 20]
    assert index.metadata(list(range(123))) == expected.metadata(list(range(123)))
    GalleryIndex.open(old, verify="full")


def test_a_newer_format_version_is_refused_with_its_number(built) -> None:
    header = _header(built)
    header["format_version"] = 3
    _save_header(built, header)
    with pytest.raises(InputError, match="needs personsearch format version 3"):
        GalleryIndex.open(built)


def _retable(folder: Path, name: str, data: bytes) -> None:
    """Replace a row table and record its new size and checksum, as a careful tamperer would."""
    import hashlib

    (folder / name).write_bytes(data)
    header = _header(folder)
    for shard in header["shards"]:
        for kind in ("lines", "keys"):
            if shard[kind] == name:
                shard[f"{kind}_bytes"], shard[f"{kind}_sha256"] = len(data), hashlib.sha256(data).hexdigest()
    _save_header(folder, header)


@pytest.mark.parametrize("kind", ["garbage", "float", "short", "beyond", "backwards"])
def test_a_rewritten_line_table_never_gives_a_wrong_row(built, lazy, kind: str) -> None:
    import io

    name = "shard-00001.lines.npy"
    lines = np.load(built / name)
    if kind == "beyond":
        lines[3, 0] = 10**12
    elif kind == "backwards":
        lines[3, 0] = lines[1, 0]
    buffer = io.BytesIO()
    array = {"float": lines.astype(np.float64), "short": lines[:-1]}.get(kind, lines)
    np.save(buffer, array)
    data = b"\x93NUMPY garbage" if kind == "garbage" else buffer.getvalue()
    _retable(built, name, data)
    index = GalleryIndex.open(built)
    assert index.entry(0).path == "cam0/img00000.jpg"
    with pytest.raises(InputError, match="damaged or was tampered with") as caught:
        index.metadata([50, 53, 54])
    assert name in caught.value.message or "shard-00001.jsonl" in caught.value.message
