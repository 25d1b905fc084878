"""``--compile``: the compiled image encoder gives the plain encoder's embeddings, runs every batch at one
size, falls back (never fails) when compilation breaks, and is refused up front without a compiler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.helpers import TINY_IMAGE_SIZE
from typer.testing import CliRunner

from personsearch.cli.app import app
from personsearch.errors import InputError
from personsearch.model import compiled
from personsearch.model.compiled import CompiledImageEncoder, check_compile_support, compiled_image_encoder

runner = CliRunner()
CPU = torch.device("cpu")


class Recorder:
    """Stands in for ``torch.compile``: records the batch sizes the 'compiled' encoder sees."""

    def __init__(self, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.fail = fail

    def __call__(self, fn, **kwargs):
        assert kwargs.get("dynamic") is False and kwargs["options"]["freezing"] is True

        def run(images):
            self.sizes.append(images.shape[0])
            if self.fail:
                raise RuntimeError("inductor: C++ compile error\nlong log")
            return fn(images)

        return run


def test_short_batches_are_padded_to_the_compiled_size(monkeypatch, tiny_arch):
    from personsearch.model import build_clip

    recorder = Recorder()
    monkeypatch.setattr(compiled.torch, "compile", recorder)
    clip = build_clip(tiny_arch, image_size=TINY_IMAGE_SIZE, stride=8).eval()
    images = torch.randn(5, 3, *TINY_IMAGE_SIZE)
    plain = clip.encode_image(images)
    encoder = CompiledImageEncoder(clip.encode_image)
    with torch.no_grad():
        first = encoder(images[:4])
        last = encoder(images[4:])
    assert recorder.sizes == [4, 4]  # the last batch of 1 ran at the compiled size of 4
    torch.testing.assert_close(torch.cat([first, last]), plain, rtol=1e-5, atol=1e-6)


def test_a_failed_compile_falls_back_to_the_plain_encoder(monkeypatch, tiny_arch, caplog):
    from personsearch.model import build_clip

    monkeypatch.setattr(compiled.torch, "compile", Recorder(fail=True))
    clip = build_clip(tiny_arch, image_size=TINY_IMAGE_SIZE, stride=8).eval()
    images = torch.randn(3, 3, *TINY_IMAGE_SIZE)
    encoder = CompiledImageEncoder(clip.encode_image)
    with torch.no_grad():
        out = encoder(images)
        again = encoder(images)
    torch.testing.assert_close(out, clip.encode_image(images))
    torch.testing.assert_close(again, out)
    assert encoder.failed and "continuing without it" in caplog.text and "long log" not in caplog.text


def test_the_plain_method_comes_back_after_the_run(monkeypatch, tiny_arch):
    from personsearch.model import build_clip

    monkeypatch.setattr(compiled.torch, "compile", Recorder())
    clip = build_clip(tiny_arch, image_size=TINY_IMAGE_SIZE, stride=8)
    with compiled_image_encoder(clip, CPU) as inside:
        assert isinstance(inside.encode_image, CompiledImageEncoder)
    assert "encode_image" not in clip.__dict__ and not isinstance(clip.encode_image, CompiledImageEncoder)
    with compiled_image_encoder(clip, CPU, enabled=False) as inside:
        assert "encode_image" not in inside.__dict__


def test_no_compiler_is_refused_before_any_work(monkeypatch, trained_run, prepared_tiny, tmp_path):
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="C\\+\\+ compiler"):
        check_compile_support(CPU)
    out = tmp_path / "index"
    result = runner.invoke(app, ["export", str(trained_run), "--data", str(prepared_tiny), "--split", "test",
                                 "--out", str(out), "--compile"])
    assert result.exit_code == 2 and "C++ compiler" in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.slow
def test_a_compiled_export_matches_the_plain_one(trained_run, prepared_tiny, tmp_path):
    """The real torch.compile (inductor, freezing) on the CPU: same rows, embeddings within float noise."""
    from personsearch.retrieval.index import GalleryIndex

    indexes = {}
    for flag in ((), ("--compile",)):
        out = tmp_path / f"index{len(flag)}"
        result = runner.invoke(app, ["export", str(trained_run), "--data", str(prepared_tiny), "--split", "test",
                                     "--out", str(out), "--batch-size", "4", "--precision", "fp32", "--json",
                                     *flag])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["indexed"] > 4  # several batches, a short last one included
        indexes[bool(flag)] = GalleryIndex.open(out)
    plain, fast = indexes[False], indexes[True]
    assert [e.path for e in plain.entries()] == [e.path for e in fast.entries()]
    vectors = {key: np.concatenate([chunk for _, chunk in index.iter_embeddings()]) for key, index in indexes.items()}
    np.testing.assert_allclose(vectors[True], vectors[False], rtol=0, atol=2e-3)  # stored as float16


def test_compiled_kernels_are_kept_only_in_a_private_folder(monkeypatch, tmp_path, tiny_arch):
    """Inductor's cache holds code that is loaded: a folder others may write to is not used."""
    from personsearch.io.cache import CACHE_ENV
    from personsearch.model import build_clip

    monkeypatch.setattr(compiled.torch, "compile", Recorder())
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    clip = build_clip(tiny_arch, image_size=TINY_IMAGE_SIZE, stride=8)
    with compiled_image_encoder(clip, CPU):
        assert compiled.os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "inductor")
    assert (tmp_path / "cache" / "inductor").stat().st_mode & 0o077 == 0

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    shared = tmp_path / "shared"
    (shared / "inductor").mkdir(parents=True)
    (shared / "inductor").chmod(0o777)
    monkeypatch.setenv(CACHE_ENV, str(shared))
    with compiled_image_encoder(clip, CPU):
        assert "TORCHINDUCTOR_CACHE_DIR" not in compiled.os.environ
