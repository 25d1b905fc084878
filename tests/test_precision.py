"""``--precision auto``: what it picks on each kind of machine, that the measurement is made once and
remembered (and a cache that cannot be trusted is not), and that eval and export say what they used."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from typer.testing import CliRunner

from personsearch import accel
from personsearch.cli.app import app
from personsearch.errors import InputError
from personsearch.io.cache import CACHE_ENV

runner = CliRunner()
CPU = torch.device("cpu")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU that reports bf16 instructions; returns the list of probe calls made."""
    monkeypatch.setattr(accel, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    monkeypatch.setattr(accel.platform, "machine", lambda: "x86_64")
    calls: list[int] = []
    return calls


def _probe(monkeypatch, calls, fp32, bf16):
    def measured():
        calls.append(1)
        return fp32, bf16

    monkeypatch.setattr(accel, "_measure_matmul", measured)


def test_explicit_precisions_are_kept_and_checked():
    assert accel.resolve_precision("fp32", CPU) == accel.PrecisionChoice("fp32", "as asked")
    assert accel.resolve_precision("bf16", CPU).precision == "bf16"
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        accel.resolve_precision("fp16", CPU)
    with pytest.raises(InputError, match="unknown precision 'fp64'") as caught:
        accel.resolve_precision("fp64", CPU)
    assert "auto" in (caught.value.hint or "")


def test_auto_without_bf16_instructions_is_fp32_without_measuring(monkeypatch, fresh_cache):
    monkeypatch.setattr(accel, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(accel.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(accel, "_measure_matmul", lambda: pytest.fail("measured on a CPU without bf16"))
    choice = accel.resolve_precision("auto", CPU)
    assert choice.precision == "fp32" and "no bf16 instructions" in choice.reason
    assert not fresh_cache.exists()


@pytest.mark.parametrize(("fp32", "bf16", "expected"), [(200.0, 890.0, "bf16"), (310.0, 180.0, "fp32"),
                                                         (300.0, 330.0, "fp32")])
def test_auto_on_a_bf16_cpu_follows_the_measurement(monkeypatch, fresh_cache, bf16_cpu, fp32, bf16, expected):
    _probe(monkeypatch, bf16_cpu, fp32, bf16)
    choice = accel.resolve_precision("auto", CPU)
    assert choice.precision == expected
    assert f"{bf16 / fp32:.2f}x fp32" in choice.reason
    # Measured once: the second decision (another process, same machine) reads the cache.
    assert accel.resolve_precision("auto", CPU) == choice and bf16_cpu == [1]
    stored = json.loads((fresh_cache / "precision.json").read_text())
    assert [(m["fp32"], m["bf16"]) for m in stored["machines"].values()] == [(fp32, bf16)]
    assert (fresh_cache / "precision.json").stat().st_mode & 0o077 == 0


def test_the_measurement_is_per_thread_count(monkeypatch, fresh_cache, bf16_cpu):
    _probe(monkeypatch, bf16_cpu, 200.0, 890.0)
    accel.resolve_precision("auto", CPU)
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)
    accel.resolve_precision("auto", CPU)
    assert bf16_cpu == [1, 1]


@pytest.mark.parametrize("damage", ["garbage", "wrong-version", "group-writable", "bad-rates"])
def test_a_cache_that_cannot_be_trusted_is_measured_again(monkeypatch, fresh_cache, bf16_cpu, damage):
    _probe(monkeypatch, bf16_cpu, 200.0, 890.0)
    accel.resolve_precision("auto", CPU)
    path = fresh_cache / "precision.json"
    data = json.loads(path.read_text())
    if damage == "garbage":
        path.write_bytes(b"\x00{not json")
    elif damage == "wrong-version":
        path.write_text(json.dumps({**data, "version": 99}))
    elif damage == "group-writable":
        os.chmod(path, 0o666)
    else:
        for entry in data["machines"].values():
            entry["bf16"] = "fast"
        path.write_text(json.dumps(data))
    assert accel.resolve_precision("auto", CPU).precision == "bf16"
    assert bf16_cpu == [1, 1]


def test_no_cache_folder_still_decides(monkeypatch, bf16_cpu):
    monkeypatch.setenv(CACHE_ENV, "")
    _probe(monkeypatch, bf16_cpu, 300.0, 100.0)
    assert accel.resolve_precision("auto", CPU).precision == "fp32"
    assert accel.resolve_precision("auto", CPU).precision == "fp32" and bf16_cpu == [1, 1]


def test_the_real_measurement_gives_positive_rates():
    fp32, bf16 = accel._measure_matmul(rows=64, width=32, hidden=64, repeats=1)
    assert fp32 > 0 and bf16 > 0


def test_auto_on_cuda_prefers_bf16(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert accel.resolve_precision("auto", cuda).precision == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert accel.resolve_precision("auto", cuda).precision == "fp16"


def test_autocast_resolves_auto(monkeypatch, fresh_cache, bf16_cpu):
    _probe(monkeypatch, bf16_cpu, 200.0, 890.0)
    with accel.autocast("auto", CPU):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(accel, "cpu_flags", lambda: frozenset())
    with accel.autocast("auto", CPU):
        assert not torch.is_autocast_enabled("cpu")


def test_eval_and_export_say_which_precision_they_used(trained_run, prepared_tiny, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # eval appends to the run's metrics
    result = runner.invoke(app, ["eval", str(run), "--data", str(prepared_tiny), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["precision"] == "fp32" and report["precision_reason"].startswith("auto")

    result = runner.invoke(app, ["eval", str(run), "--data", str(prepared_tiny), "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert "precision: fp32 (as asked)" in result.stderr

    out = tmp_path / "index"
    result = runner.invoke(app, ["export", str(trained_run), "--data", str(prepared_tiny), "--split", "test",
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["precision"] == "fp32" and report["precision_reason"].startswith("auto")
    header = json.loads((out / "header.json").read_text())
    assert header["model"]["precision"] == "fp32"  # the index records what was used, never "auto"

    result = runner.invoke(app, ["query", "a woman in a red coat", "--index", str(out), "--precision", "auto",
                                 "--json", "-k", "2"])
    assert result.exit_code == 0, result.output
