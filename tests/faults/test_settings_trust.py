"""Settings that must never be trusted blindly: numbers too long to convert or beyond every valid
range, YAML nested deep enough to crash the parser, duplicate keys, values that pass a loose check
but crash training, unusable text in paths, and settings files that are not plain small YAML
files. Each is refused up front with one message naming the key (or file), the value and where it
came from (file:line, --set, environment variable); exit 2, no traceback, no run folder left."""

from __future__ import annotations

import os
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel
from tests.helpers import tree_digest

from personsearch.errors import InputError
from personsearch.settings import Settings, resolve_settings

from ._support import assert_input_error, invoke, tiny_sets

pytestmark = pytest.mark.faults

BIG = "9" * 5000  # beyond Python's 4,300-digit limit for int("...")


def _config(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _refused(**kwargs) -> str:  # noqa: ANN003
    """resolve_settings raises InputError (not a crash) and returns its text."""
    kwargs.setdefault("environ", {})
    with pytest.raises(InputError) as err:
        resolve_settings(**kwargs)
    return str(err.value)


# --------------------------------------------------------------------------------------------
# numbers: too long to convert, beyond int64, floats standing for huge integers


@pytest.mark.parametrize(
    ("item", "key"),
    [
        (f"train.epochs={BIG}", "train.epochs"),
        (f"runtime.seed={2**70}", "runtime.seed"),
        (f"runtime.seed={2**64}", "runtime.seed"),
        ("optim.lr=0x" + "f" * 200, "optim.lr"),  # a 200-digit hex integer where a float goes
        ("runtime.seed=" + ":".join(["59"] * 200), "runtime.seed"),  # YAML 1.1 base-60: a 350-digit integer
        (f"model.image_size=[{BIG}, 128]", "model.image_size"),
        ("train.epochs=true", "train.epochs"),
    ],
)
def test_set_numbers_out_of_every_range_are_refused(item, key):
    assert_input_error(invoke("config", "show", "--set", item), key, "--set")


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        (f"train:\n  epochs: {BIG}\n", "train.epochs", 2),
        (f"runtime:\n  seed: {2**70}\n", "runtime.seed", 2),
        ("optim:\n  lr: 1.0e-5\nruntime:\n  seed: 1.0e+23\n", "runtime.seed", 4),
        (f"data:\n  workers: {2**63}\n", "data.workers", 2),
    ],
)
def test_config_numbers_out_of_every_range_are_refused(tmp_path, text, key, line):
    config = _config(tmp_path, text)
    text_out = assert_input_error(invoke("config", "show", "--config", config), key, f"config.yaml:{line}")
    assert "range" in text_out or "less than" in text_out


@pytest.mark.parametrize(
    ("value", "key"),
    [(BIG, "train.epochs"), (str(2**70), "runtime.seed"), ("[[" + BIG + "]]", "model.image_size")],
)
def test_environment_numbers_out_of_every_range_name_the_variable(monkeypatch, value, key):
    name = "PERSONSEARCH_" + key.upper().replace(".", "__")
    monkeypatch.setenv(name, value)
    assert_input_error(invoke("config", "show"), key, name)


def _mentions_int(annotation: object) -> bool:
    if annotation is int:
        return True
    if typing.get_origin(annotation) is typing.Annotated:
        return _mentions_int(typing.get_args(annotation)[0])
    return any(_mentions_int(arg) for arg in typing.get_args(annotation))


def _integer_fields(model: type[BaseModel] = Settings, prefix: str = "") -> list[str]:
    found = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _integer_fields(annotation, dotted + ".")
        elif _mentions_int(annotation):
            found.append(dotted)
    return found


INTEGER_FIELDS = _integer_fields()


@pytest.mark.parametrize("dotted", INTEGER_FIELDS)
def test_every_integer_setting_has_an_upper_bound(dotted):
    """No integer setting takes 2**64 (beyond int64, numpy and torch), wherever it is declared."""
    value = [2**64, 2**64] if dotted in ("model.image_size", "schedule.milestones") else 2**64
    message = _refused(sets=[f"{dotted}={value}"])
    assert dotted in message and "--set" in message


@pytest.mark.parametrize("dotted", ["train.epochs", "data.workers", "model.arch.vision_layers", "runtime.seed"])
def test_huge_python_integers_give_a_bounded_message(dotted):
    section, _, key = dotted.rpartition(".")
    tree: dict = {key: 10**5000}
    for part in reversed(section.split(".")):
        tree = {part: tree}
    message = _refused(config=tree)
    assert dotted in message and len(message) < 600


# --------------------------------------------------------------------------------------------
# nesting


@pytest.mark.parametrize(
    "text",
    [
        "model:\n  image_size: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "model: " + "{a: " * 100_000 + "1" + "}" * 100_000 + "\n",
        "".join("  " * depth + "a:\n" for depth in range(1000)),  # just under 1 MiB
    ],
    ids=["lists", "flow-mappings", "block-mappings"],
)
def test_deeply_nested_yaml_is_refused_naming_the_file(tmp_path, text):
    config = _config(tmp_path, text, "deep.yaml")
    assert_input_error(invoke("config", "show", "--config", config), "deep.yaml:", "nested more than")
    assert "deep.yaml" in _refused(config=config)


def test_deeply_nested_set_and_environment_values_are_refused(monkeypatch):
    deep = "[" * 100_000 + "]" * 100_000
    assert_input_error(invoke("config", "show", "--set", f"model.image_size={deep}"), "--set model.image_size",
                       "nested more than")
    monkeypatch.setenv("PERSONSEARCH_MODEL__IMAGE_SIZE", deep)
    assert_input_error(invoke("config", "show"), "PERSONSEARCH_MODEL__IMAGE_SIZE", "nested more than")


# --------------------------------------------------------------------------------------------
# duplicate keys


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("optim:\n  lr: 1.0e-5\ntrain:\n  epochs: 3\noptim:\n  eps: 1.0e-3\n", "optim", (1, 5)),
        ("optim:\n  lr: 1.0e-5\n  eps: 1.0e-3\n  lr: 2.0e-5\n", "optim.lr", (2, 4)),
        ("model:\n  arch:\n    text_width: 64\n\n    text_width: 128\n", "model.arch.text_width", (3, 5)),
        ("optim: {lr: 1.0e-5, lr: 2.0e-5}\n", "optim.lr", (1, 1)),
    ],
)
def test_duplicate_yaml_keys_are_refused_with_both_lines(tmp_path, text, key, lines):
    config = _config(tmp_path, text, "dup.yaml")
    result = invoke("config", "show", "--config", config)
    assert_input_error(result, f"'{key}'", "dup.yaml", "duplicate", f"lines {lines[0]} and {lines[1]}")


def test_duplicate_keys_in_a_run_config_are_refused(tmp_path):
    from personsearch.runs import load_run_settings

    run = tmp_path / "run"
    run.mkdir()
    _config(run, "train:\n  epochs: 3\ntrain:\n  epochs: 4\n")
    with pytest.raises(InputError, match="duplicate"):
        load_run_settings(run)


# --------------------------------------------------------------------------------------------
# values each field must refuse (ranges and choices where they are declared)


@pytest.mark.parametrize(
    "item",
    [
        "optim.betas=[2, 3]", "optim.betas=[0.9, 1.0]", "optim.betas=[-0.1, 0.9]", "model.vocab_size=10",
        "model.vocab_size=49405", "model.text_length=78", "model.temperature=1e-300", "optim.lr=1e300",
        "optim.eps=1e300", "optim.momentum=1.5", "schedule.gamma=10", "optim.weight_decay=1e300",
        "optim.lr_factor=1e300", "optim.grad_clip=1e308", "train.max_minutes=1e308", "data.workers=100000",
        "model.arch.vision_width=100000", "model.arch.text_layers=100000", "model.image_size=[100000, 128]",
        "model.stride=100000", "masking.layers=100000", "runtime.device=cuda:99999999999999999999",
        "runtime.device=cpu; rm -rf", "loss.sdm_weight=1e300", "schedule.power=1e300",
        "masking.temperature=1e300", "schedule.target_lr=1e300",
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(item):
    key = item.partition("=")[0]
    assert_input_error(invoke("config", "show", "--set", item), key, "--set")


@pytest.mark.parametrize(
    ("sets", "key", "also"),
    [
        (["model.arch.vision_heads=7"], "model.arch.vision_heads", "vision_width"),
        (["model.arch.text_width=100"], "model.arch.text_width", "text_heads"),
        (["model.pretrained=null", "model.arch.embed_dim=96"], "model.arch.embed_dim", "64"),
        (["model.pretrained=null", "model.image_size=[65, 32]"], "model.image_size", "patch"),
        (["model.pretrained=null", "model.stride=32"], "model.stride", "patch_size"),
        (["data.sampler=identity", "data.num_instances=3"], "data.num_instances", "train.batch_size"),
        (["schedule.milestones=[50, 20]"], "schedule.milestones", "increasing"),
    ],
)
def test_settings_that_do_not_fit_together_are_refused(sets, key, also):
    message = _refused(sets=sets)
    assert key in message and also in message and "--set" in message


def test_inconsistent_values_from_a_file_point_at_the_line(tmp_path):
    config = _config(tmp_path, "model:\n  pretrained: null\n  arch:\n    embed_dim: 64\n    vision_heads: 5\n")
    assert_input_error(invoke("config", "show", "--config", config), "model.arch.vision_heads", "config.yaml:5")


# --------------------------------------------------------------------------------------------
# the same through `train`: refused before a run folder exists, instead of crashing inside


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (["--set", "optim.betas=[2, 3]"], "optim.betas"),
        (["--set", "optim.betas=[0.9, 1.0]"], "optim.betas"),
        (["--set", "model.vocab_size=10"], "model.vocab_size"),
        (["--set", f"runtime.seed={2**70}"], "runtime.seed"),
        (["--seed", str(2**70)], "runtime.seed"),
        (["--set", "runtime.output_dir=/tmp/a\x00b"], "runtime.output_dir"),
        (["--set", "model.temperature=1e-300"], "model.temperature"),
    ],
)
def test_train_refuses_settings_that_would_crash_it(prepared_tiny, tmp_path, extra, key):
    before = tree_digest(prepared_tiny)
    result = invoke("train", "--data", prepared_tiny, "--name", "r", *tiny_sets(f"runtime.output_dir={tmp_path}"),
                    *extra)
    assert_input_error(result, key)
    assert not (tmp_path / "r").exists(), "a refused run must not leave a run folder behind"
    assert tree_digest(prepared_tiny) == before


# --------------------------------------------------------------------------------------------
# text: NUL bytes and lone surrogates (bytes that were not UTF-8) in paths and names


@pytest.mark.parametrize("key", ["data.root", "runtime.output_dir", "model.pretrained"])
@pytest.mark.parametrize("bad", ["a\x00b", "caf\udce9"], ids=["nul", "surrogate"])
def test_unusable_text_in_paths_is_refused(key, bad, monkeypatch, tmp_path):
    assert_input_error(invoke("config", "show", "--set", f"{key}={bad}"), key, "--set")
    if "\x00" not in bad:  # an environment variable cannot hold a NUL byte
        name = "PERSONSEARCH_" + key.upper().replace(".", "__")
        monkeypatch.setenv(name, bad)
        assert_input_error(invoke("config", "show"), key, name)
        monkeypatch.delenv(name)
    section, _, field = key.partition(".")
    escaped = bad.replace("\x00", "\\0").replace("\udce9", "\\udce9")
    config = _config(tmp_path, f'{section}:\n  {field}: "{escaped}"\n')
    assert_input_error(invoke("config", "show", "--config", config), key, "config.yaml:2")


def test_empty_paths_are_refused():
    for key in ("data.root", "runtime.output_dir", "model.pretrained"):
        assert key in _refused(sets=[f"{key}=''"])


# --------------------------------------------------------------------------------------------
# the settings file itself


def test_a_folder_is_named_as_a_folder(tmp_path):
    assert_input_error(invoke("config", "show", "--config", tmp_path), str(tmp_path), "is a folder")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "settings.yaml"
    os.mkfifo(fifo)
    assert_input_error(invoke("config", "show", "--config", fifo), "settings.yaml", "not a regular file")


def test_a_device_is_refused_without_reading_it():
    assert_input_error(invoke("config", "show", "--config", "/dev/zero"), "/dev/zero", "not a regular file")


def test_an_empty_file_is_refused(tmp_path):
    config = _config(tmp_path, "")
    assert_input_error(invoke("config", "show", "--config", config), "config.yaml", "empty")
    _config(tmp_path, "# nothing to change\n")
    assert invoke("config", "show", "--config", config).exit_code == 0  # comments only: no overrides


def test_several_documents_are_refused_at_the_second(tmp_path):
    config = _config(tmp_path, "optim: {lr: 1.0e-5}\n---\noptim: {lr: 2.0e-5}\n")
    assert_input_error(invoke("config", "show", "--config", config), "config.yaml:2", "second YAML document")


def test_an_empty_section_is_named(tmp_path):
    config = _config(tmp_path, "optim:\n  lr: 1.0e-5\nmodel:\n")
    assert_input_error(invoke("config", "show", "--config", config), "section model is empty", "config.yaml:3")


def test_a_dotted_key_in_a_file_gets_a_hint(tmp_path):
    config = _config(tmp_path, "optim.lr: 2.0e-5\n")
    assert_input_error(invoke("config", "show", "--config", config), "'optim.lr'", "config.yaml:1", "nested")
