"""`prepare` trusts nothing it is given: it never replaces or writes into what the user owns, never
writes inside the raw dataset, refuses unwritable outputs before the long work, reports every
hostile annotation entry instead of crashing, reads annotation files with bounded memory, and a
damaged prepared dataset is one message naming the file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from tests.helpers import tree_digest

from ._support import REPO, assert_input_error, invoke
from ._support import raw_entries as _entries

pytestmark = pytest.mark.faults




def _save(raw: Path, entries: list) -> None:
    (raw / "reid_raw.json").write_text(json.dumps(entries))


def _prepare(raw: Path, out: Path, *extra: str):  # noqa: ANN202
    return invoke("prepare", "CUHK-PEDES", "--root", raw, "--out", out, "--json", "--workers", "1", *extra)


def _report(result) -> dict:  # noqa: ANN001
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _problems(report: dict, entry: int) -> list[str]:
    return [p["problem"] for p in report["problems"] if p["entry"] == entry]


@pytest.fixture()
def no_long_work(monkeypatch):  # noqa: ANN201
    """Reading annotations or drawing the synthetic set fails the test: refusals must come first."""
    import personsearch.data.prepared as prepared
    import personsearch.data.synthetic as synthetic

    def long_work(*args, **kwargs):  # noqa: ANN202
        raise AssertionError("the long work started before the output was checked")

    monkeypatch.setattr(prepared, "read_annotations", long_work)
    monkeypatch.setattr(synthetic, "generate_raw_dataset", long_work)


# --------------------------------------------------------------------------------------------
# 1. nothing the user owns is deleted, replaced or written into


def test_synthetic_root_holding_a_user_attributes_json_is_not_replaced(tmp_path, no_long_work):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "attributes.json").write_text('{"my": "notes"}')
    (mine / "thesis.txt").write_text("precious")
    before = tree_digest(mine)
    result = invoke("prepare", "synthetic", "--root", mine, "--out", tmp_path / "prep", "--ids", "3")
    assert_input_error(result, str(mine), "refusing")
    assert tree_digest(mine) == before
    assert not (tmp_path / "prep").exists()


def test_a_folder_named_like_a_synthetic_set_is_not_recognised_by_names(tmp_path):
    from personsearch.data.synthetic import generate_raw_dataset
    from personsearch.errors import InputError

    old = tmp_path / "old"
    generate_raw_dataset(old, ids=3, seed=0)
    (old / ".personsearch.json").unlink()  # drawn before markers existed
    generate_raw_dataset(old, ids=4, seed=1)  # its content validates strictly: replaced
    assert len({e["id"] for e in _entries(old)}) == 4
    (old / ".personsearch.json").unlink()
    (old / "my-notes.txt").write_text("mine")  # the user added a file: no longer only what we wrote
    before = tree_digest(old)
    with pytest.raises(InputError, match="refusing"):
        generate_raw_dataset(old, ids=3)
    fake = tmp_path / "fake"  # the right names, the wrong content
    (fake / "imgs" / "synthetic").mkdir(parents=True)
    (fake / "imgs" / "synthetic" / "p00001_s0.jpg").write_bytes(b"holiday")
    (fake / "reid_raw.json").write_text("[]")
    (fake / "attributes.json").write_text('{"synthetic/p00001_s0.jpg": {"mood": "happy"}}')
    fake_before = tree_digest(fake)
    with pytest.raises(InputError, match="refusing"):
        generate_raw_dataset(fake, ids=3)
    assert tree_digest(old) == before and tree_digest(fake) == fake_before


@pytest.mark.parametrize(
    "manifest",
    [
        {"kind": "personsearch.prepared", "version": 99},
        {"kind": "personsearch.prepared"},
        {"kind": "personsearch.prepared", "version": "1"},
        {"kind": "something-else", "version": 1},
    ],
    ids=["newer-version", "no-version", "version-as-text", "other-kind"],
)
def test_out_is_replaced_only_when_recognised_by_content(raw_copy, tmp_path, manifest, no_long_work):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "tokens.npy").write_bytes(b"the user's array")
    before = tree_digest(out)
    assert_input_error(_prepare(raw_copy, out), str(out), "refusing")
    assert tree_digest(out) == before


def test_a_prepared_dataset_from_the_previous_version_is_still_replaced(raw_copy, tmp_path):
    out = tmp_path / "out"
    _report(_prepare(raw_copy, out))
    (out / ".personsearch.json").unlink()  # written before markers existed
    (out / "notes.txt").write_text("mine")
    _report(_prepare(raw_copy, out))
    assert (out / "notes.txt").read_text() == "mine"  # kept: only our own files are rewritten
    assert (out / ".personsearch.json").is_file()


# --------------------------------------------------------------------------------------------
# 2. nothing escapes: --out never inside the raw dataset, never holding it


@pytest.mark.parametrize("where", ["same", "subfolder", "symlink-into", "ancestor", "ancestor-with-tokens"])
def test_out_inside_or_around_the_raw_dataset_is_refused(raw_copy, tmp_path, where, no_long_work):
    if where == "same":
        out = raw_copy
    elif where == "subfolder":
        out = raw_copy / "imgs" / "prepared"
    elif where == "symlink-into":
        (tmp_path / "link").symlink_to(raw_copy / "imgs")
        out = tmp_path / "link" / "prepared"
    elif where == "ancestor":
        out = tmp_path  # holds raw/, a download of the user's (not a synthetic set drawn by the tool)
        (raw_copy / ".personsearch.json").unlink()
        (raw_copy / "README.txt").write_text("CUHK-PEDES, from the authors")
    else:
        out = tmp_path  # holds a synthetic raw/ and a file of the user's
        (tmp_path / "tokens.npy").write_bytes(b"the user's array")
    before = tree_digest(tmp_path)
    result = _prepare(raw_copy, out)
    assert_input_error(result, "raw dataset")
    assert tree_digest(tmp_path) == before


def test_a_raw_dataset_path_that_is_not_utf8_is_refused_before_reading(raw_copy, tmp_path, no_long_work):
    import os

    odd = tmp_path / os.fsdecode(b"raw-\xff")  # a legal Linux name the manifest (UTF-8 JSON) cannot hold
    raw_copy.rename(odd)
    assert_input_error(_prepare(odd, tmp_path / "out"), "UTF-8")
    assert not (tmp_path / "out").exists()


def test_synthetic_out_inside_its_root_is_refused_before_drawing(tmp_path, no_long_work):
    root = tmp_path / "syn"
    result = invoke("prepare", "synthetic", "--root", root, "--out", root / "prepared", "--ids", "3")
    assert_input_error(result, "raw dataset")
    assert not root.exists()


# --------------------------------------------------------------------------------------------
# 3a. unwritable outputs are refused before the long work


def _unwritable(kind: str, tmp_path: Path) -> Path:
    if kind == "under-a-file":
        (tmp_path / "file.txt").write_text("a file")
        return tmp_path / "file.txt" / "sub" / "out"
    return Path(f"/{kind}/personsearch-test-{tmp_path.name}/out")


@pytest.mark.parametrize("kind", ["under-a-file", "proc", "sys"])
def test_unwritable_out_is_refused_before_reading(raw_copy, tmp_path, kind, no_long_work):
    out = _unwritable(kind, tmp_path)
    before = tree_digest(raw_copy)
    assert_input_error(_prepare(raw_copy, out), "--out")
    assert tree_digest(raw_copy) == before


@pytest.mark.parametrize("kind", ["under-a-file", "proc", "sys"])
def test_unwritable_preview_is_refused_before_drawing(tmp_path, kind, no_long_work):
    preview = _unwritable(kind, tmp_path).with_suffix(".png")
    result = invoke("prepare", "synthetic", "--out", tmp_path / "syn", "--ids", "3", "--preview", preview)
    assert_input_error(result, "--preview")
    assert not (tmp_path / "syn").exists()


def test_unwritable_synthetic_out_is_refused_before_drawing(tmp_path, no_long_work):
    result = invoke("prepare", "synthetic", "--out", _unwritable("under-a-file", tmp_path), "--ids", "3")
    assert_input_error(result, "file.txt")


# --------------------------------------------------------------------------------------------
# 3b-d. hostile annotation entries: reported and skipped (or --strict names them), never a crash


HOSTILE_ENTRIES = {
    # entry field -> value, and a word the problem must contain
    "surrogate-caption": ({"captions": ["a man in \ud800 red"]}, "surrogate"),
    "surrogate-path": ({"file_path": "synthetic/\udc80.jpg"}, "surrogate"),
    "nul-in-path": ({"file_path": "synthetic/a\u0000.jpg"}, "NUL"),
    "control-only-caption": ({"captions": ["\x01\x02\x7f"]}, "empty"),
    "zero-width-caption": ({"captions": ["\u200b\u200d\ufeff"]}, "empty"),
    "unicode-space-caption": ({"captions": ["\u00a0\u3000\u2003"]}, "empty"),
    "entity-only-caption": ({"captions": ["&nbsp;&nbsp;"]}, "empty"),
    "long-caption": ({"captions": ["a man in a red coat " * 150]}, "characters long"),
    "long-word": ({"captions": ["a " + "x" * 150]}, "word"),
    "many-captions": ({"captions": ["a man in red"] * 101}, "captions"),
    "id-2**70": ({"id": 2**70}, "64-bit"),
    "id-minus-2**64": ({"id": -(2**64)}, "64-bit"),
    "id-float": ({"id": 3.0}, "expected int"),
    "id-text": ({"id": "3"}, "expected int"),
    "id-null": ({"id": None}, "expected int"),
    "id-list": ({"id": [3]}, "expected int"),
    "id-bool": ({"id": True}, "expected int"),
    "id-nan": ({"id": float("nan")}, "expected int"),
}


def test_every_hostile_entry_is_reported_and_skipped(raw_copy, tmp_path):
    entries = _entries(raw_copy)
    for number, (change, _) in enumerate(HOSTILE_ENTRIES.values()):
        entries[number].update(change)
    text = json.dumps(entries)
    # an id of 5,000 digits (Python's int parsing stops at 4,300): the last entry
    text = text[: text.rindex('"id": ')] + '"id": ' + "9" * 5000 + "}]"
    (raw_copy / "reid_raw.json").write_text(text)
    before = tree_digest(raw_copy)

    report = _report(_prepare(raw_copy, tmp_path / "out"))
    for number, (name, (_, word)) in enumerate(HOSTILE_ENTRIES.items()):
        found = _problems(report, number)
        assert any(word.lower() in problem.lower() for problem in found), (name, found)
    last = len(entries) - 1
    assert any("5,000 digits" in problem for problem in _problems(report, last)), _problems(report, last)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    bad = set(range(len(HOSTILE_ENTRIES))) | {last}
    assert not bad & {e["entry"] for e in manifest["entries"]}
    assert all(abs(e["id"]) < 2**63 for e in manifest["entries"])
    json.dumps(report, ensure_ascii=False).encode("utf-8")  # every problem path is valid text
    assert tree_digest(raw_copy) == before

    strict = _prepare(raw_copy, tmp_path / "strict", "--strict")
    assert_input_error(strict, "entry 0")
    assert not (tmp_path / "strict").exists()


def test_a_hostile_entry_in_the_table_output_is_shown_escaped(raw_copy, tmp_path):
    entries = _entries(raw_copy)
    entries[1]["file_path"] = "synthetic/\x1b[31mred\x00.jpg"
    entries[2]["captions"] = ["\ud800"]
    _save(raw_copy, entries)
    result = invoke("prepare", "CUHK-PEDES", "--root", raw_copy, "--check", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x00" not in result.output
    assert "entry 1" in result.output and "entry 2" in result.output


def test_entry_count_limit_is_a_clear_message(raw_copy, tmp_path, monkeypatch):
    from personsearch.data import formats

    monkeypatch.setattr(formats, "MAX_ENTRIES", 5)
    assert_input_error(_prepare(raw_copy, tmp_path / "out"), "reid_raw.json", "5 entries")
    assert not (tmp_path / "out").exists()


def test_annotation_json_syntax_errors_name_line_and_column(raw_copy, tmp_path):
    """Read entry by entry, the file still gets json's own line and column, also megabytes in."""
    entry = json.dumps({"id": 1, "split": "train", "file_path": "x.jpg", "captions": ["caf\u00e9 " * 40]})
    long_prefix = "[\n" + ",\n".join([entry] * 20_000)  # ~7 MB: the reader has dropped most of it
    cases = [
        '[{"id": 1}, {"id": 2,, }]',
        "[\n{}\n,\n]",
        "[{}] extra",
        '[{"a": "unterminated',
        "",
        long_prefix + ',\n  {"id": 2,\n "split": }]',
        long_prefix + "\n  , [1, 2 3]]",
        long_prefix + '\n, "no closing bracket"',
    ]
    for text in cases:
        with pytest.raises(json.JSONDecodeError) as expected:
            json.loads(text)
        where = f"line {expected.value.lineno}, column {expected.value.colno}"
        (raw_copy / "reid_raw.json").write_text(text, encoding="utf-8")
        assert_input_error(_prepare(raw_copy, tmp_path / "out"), "reid_raw.json", where)
    (raw_copy / "reid_raw.json").write_text('  "a string"')
    assert_input_error(_prepare(raw_copy, tmp_path / "out"), "expected a JSON list")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# 4. memory: annotation files are read entry by entry


_MEASURE = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from personsearch.data.formats import read_annotations, resolve_format
    from personsearch.errors import InputError
    root = Path(sys.argv[1])
    try:
        read_annotations(resolve_format("CUHK-PEDES"), root, root / "reid_raw.json", workers=1)
        outcome = "read"
    except InputError as exc:
        outcome = str(exc)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(outcome)
    """
)


def _peak_bytes(root: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(root)], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert done.returncode == 0, done.stderr
    peak, outcome = done.stdout.split("\n", 1)
    return int(peak), outcome


JUNK = {  # about 15 MB each; parsed whole, each took 0.4 to 1.6 GB
    "many-empty-objects": lambda n: "[" + ",".join(["{}"] * (n // 3)) + "]",
    "many-empty-lists": lambda n: "[" + ",".join(["[]"] * (n // 3)) + "]",
    "one-huge-array": lambda n: "[[" + ",".join(["1234"] * (n // 5)) + "]]",
    "nested-runs": lambda n: "[" + ",".join(["[[[[[]]]]]"] * (n // 11)) + "]",
    "huge-caption-list": lambda n: '[{"id": 1, "split": "train", "file_path": "a.jpg", "captions": ['
    + ",".join(['""'] * (n // 3))
    + "]}]",
}


def test_junk_annotation_files_are_read_with_bounded_memory(tmp_path):
    size = 15_000_000
    (tmp_path / "empty" / "imgs").mkdir(parents=True)
    (tmp_path / "empty" / "reid_raw.json").write_text("[]")
    baseline, _ = _peak_bytes(tmp_path / "empty")
    for name, make in JUNK.items():
        root = tmp_path / name
        (root / "imgs").mkdir(parents=True)
        (root / "reid_raw.json").write_text(make(size))
        peak, outcome = _peak_bytes(root)
        assert peak - baseline < 10 * size, (name, peak - baseline, outcome)
        assert "reid_raw.json" in outcome, (name, outcome)  # refused with a message naming the file
        shutil.rmtree(root)


def test_an_entry_over_the_entry_limit_is_refused_by_name(raw_copy, tmp_path):
    entries = _entries(raw_copy)
    entries[4]["processed_tokens"] = [["word"] * 300_000]  # 2.4 MB of JSON in one entry
    _save(raw_copy, entries)
    assert_input_error(_prepare(raw_copy, tmp_path / "out"), "reid_raw.json", "entry 4", "MiB")


# --------------------------------------------------------------------------------------------
# 3e. a damaged prepared dataset is one message naming the file, for every reader


def _damage_manifest(manifest: dict, case: str) -> str | None:
    """Apply ``case``; returns the manifest text when it must be written verbatim."""
    entry = manifest["entries"][0]
    if case == "context-length-text":
        manifest["context_length"] = "77"
    elif case == "no-entries":
        del manifest["entries"]
    elif case == "entries-not-a-list":
        manifest["entries"] = {"0": entry}
    elif case == "entry-not-an-object":
        manifest["entries"][0] = [1, 2]
    elif case == "entry-lacks-pid":
        del entry["pid"]
    elif case == "pid-text":
        entry["pid"] = "0"
    elif case == "pid-bool":
        entry["pid"] = True
    elif case == "pid-out-of-range":
        entry["pid"] = 10**6
    elif case == "id-2**70":
        entry["id"] = 2**70
    elif case == "id-5000-digits":
        return json.dumps(manifest).replace(f'"id": {entry["id"]},', '"id": ' + "7" * 5000 + ",", 1)
    elif case == "num-train-ids-nan":
        manifest["num_train_ids"] = float("nan")
    elif case == "path-dotdot":
        entry["path"] = "../../../../etc/passwd"
    elif case == "path-absolute":
        entry["path"] = "/etc/passwd"
    elif case == "captions-text":
        entry["captions"] = "a man in red"
    elif case == "caption-number":
        entry["captions"] = [7]
    elif case == "row-wrong":
        entry["row"] = 5
    elif case == "splits-wrong":
        manifest["splits"] = {"test": 4}
    elif case == "raw-root-number":
        manifest["raw_root"] = 12
    elif case == "version-text":
        manifest["version"] = "1"
    elif case == "not-json":
        return '{"kind": "personsearch.prepared", "version": 1, "entries": [}'
    else:
        raise AssertionError(case)
    return None


MANIFEST_DAMAGE = [
    "context-length-text", "no-entries", "entries-not-a-list", "entry-not-an-object", "entry-lacks-pid",
    "pid-text", "pid-bool", "pid-out-of-range", "id-2**70", "id-5000-digits", "num-train-ids-nan",
    "path-dotdot", "path-absolute", "captions-text", "caption-number", "row-wrong", "splits-wrong",
    "raw-root-number", "version-text", "not-json",
]


def _damaged_copy(prepared_tiny: Path, tmp_path: Path, case: str) -> tuple[Path, str]:
    copy = tmp_path / "prepared"
    shutil.copytree(prepared_tiny, copy)
    if case.startswith("tokens-"):
        tokens = np.load(copy / "tokens.npy")
        if case == "tokens-float":
            tokens = tokens.astype(np.float32)
        elif case == "tokens-short":
            tokens = tokens[:-1]
        elif case == "tokens-out-of-vocab":
            tokens[0, 1] = 10**6
        elif case == "tokens-int64":
            tokens = tokens.astype(np.int64)
        np.save(copy / "tokens.npy", tokens)
        manifest = json.loads((copy / "manifest.json").read_text())
        import hashlib

        manifest["tokens_sha256"] = hashlib.sha256((copy / "tokens.npy").read_bytes()).hexdigest()
        (copy / "manifest.json").write_text(json.dumps(manifest))
        return copy, "tokens.npy"
    manifest = json.loads((copy / "manifest.json").read_text())
    text = _damage_manifest(manifest, case)
    (copy / "manifest.json").write_text(text if text is not None else json.dumps(manifest))
    return copy, "manifest.json"


TOKENS_DAMAGE = ["tokens-float", "tokens-short", "tokens-out-of-vocab", "tokens-int64"]


@pytest.mark.parametrize("case", MANIFEST_DAMAGE + TOKENS_DAMAGE)
def test_a_damaged_prepared_dataset_is_one_message_naming_the_file(prepared_tiny, tmp_path, case):
    from personsearch.data.prepared import PreparedDataset
    from personsearch.errors import InputError

    copy, culprit = _damaged_copy(prepared_tiny, tmp_path, case)
    with pytest.raises(InputError) as caught:
        PreparedDataset.load(copy)
    message = str(caught.value)
    assert "this prepared dataset is damaged" in message, message  # (the tmp path says "damaged" too)
    assert culprit in message and "re-run `personsearch prepare`" in message, message


@pytest.mark.parametrize("case", ["pid-text", "id-5000-digits", "path-dotdot", "tokens-out-of-vocab"])
def test_train_eval_and_export_refuse_a_damaged_prepared_dataset(prepared_tiny, trained_run, tmp_path, case):
    from ._support import tiny_sets

    copy, culprit = _damaged_copy(prepared_tiny, tmp_path, case)
    before = tree_digest(copy)
    train = invoke("train", "--data", copy, "--name", "r", *tiny_sets(f"runtime.output_dir={tmp_path / 'runs'}"))
    damaged = "this prepared dataset is damaged"
    assert_input_error(train, damaged, culprit)
    assert_input_error(invoke("eval", trained_run, "--data", copy, "--device", "cpu"), damaged, culprit)
    export = invoke("export", trained_run, "--data", copy, "--split", "test", "--out", tmp_path / "index")
    assert_input_error(export, damaged, culprit)
    assert tree_digest(copy) == before
    assert not (tmp_path / "index").exists()
