"""One-shot text queries load only what they need: the text encoder (from safetensors, only its
tensors are read), with features bit-identical to the full model's; a large weights file's
verified hash is remembered between processes, and still refused once the file changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tests.helpers import TINY_ARCH, TINY_IMAGE_SIZE, TINY_SETS

from personsearch.errors import InputError
from personsearch.model import build_clip, load_clip, weight_files, weights_trust
from personsearch.model.checkpoint_layout import is_text_key
from personsearch.runs import load_trained
from personsearch.text import tokenize

CAPTIONS = ["a woman in a red coat carrying a black bag", "man", "a person with blue jeans, a white shirt and "
            "a backpack walking past the shop on a sunny afternoon while talking on the phone"]
TEXT_ONLY = ("text",)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny IRRA run (classifier, cross-modal branch, MLM head) saved as training saves it."""
    from personsearch.engine.state import save_training_state
    from personsearch.model import build_irra
    from personsearch.runs import create_run
    from personsearch.settings import resolve_settings

    parent = tmp_path_factory.mktemp("startup")
    settings = resolve_settings(sets=[*TINY_SETS, "model.text_length=32", f"runtime.output_dir={parent}"],
                                environ={})
    run = create_run(settings, name="tiny", output_dir=parent)
    torch.manual_seed(0)
    model = build_irra(settings, num_classes=7)
    meta = {"epoch": 1, "step": 1, "batch_in_epoch": 0, "metrics": {}, "best": {}, "num_classes": 7,
            "pending_eval": False}
    save_training_state(run, model, None, meta, best=True)
    return run


@pytest.fixture(scope="module")
def tiny_index(tiny_run: Path, synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from personsearch.retrieval.export import export_run

    out = tmp_path_factory.mktemp("startup-index") / "index"
    export_run(tiny_run, out, images=synthetic_raw / "imgs", device="cpu", workers=0)
    return out


def _features(clip: torch.nn.Module, length: int) -> torch.Tensor:
    with torch.no_grad():
        return clip.encode_text(tokenize(CAPTIONS, length))


def test_the_text_encoder_alone_gives_bit_identical_features(tiny_run):
    full = load_trained(tiny_run)
    text = load_trained(tiny_run, towers=TEXT_ONLY)
    assert full.towers == ("image", "text") and text.towers == TEXT_ONLY
    assert text.clip.visual is None and text.fingerprint == full.fingerprint
    assert text.num_classes == full.num_classes == 7 and text.weights == full.weights
    assert text.clip.config == full.clip.config and text.clip.grid == full.clip.grid
    length = full.settings.model.text_length
    assert torch.equal(_features(text.clip, length), _features(full.clip, length))
    kept = text.clip.state_dict()
    assert kept and all(torch.equal(value, full.clip.state_dict()[key]) for key, value in kept.items())
    assert set(full.clip.state_dict()) - set(kept) == {k for k in full.clip.state_dict() if k.startswith("visual.")}
    with pytest.raises(InputError, match="text queries only"):
        text.clip.encode_image(torch.zeros(1, 3, *full.clip.image_size))


def test_only_the_text_encoders_tensors_are_read(tiny_run, monkeypatch):
    weights = tiny_run / "checkpoints" / "best.safetensors"
    spans: list[int] = []
    original = weight_files._read_span

    def spy(handle, offset, size, *args):
        spans.append(size)
        return original(handle, offset, size, *args)

    monkeypatch.setattr(weight_files, "_read_span", spy)
    content = weight_files.read_weights_file(weights, keep=is_text_key)
    from safetensors.torch import load_file

    everything = load_file(str(weights))
    assert content.keys() == everything.keys()
    for name, tensor in content.items():
        assert tensor.shape == everything[name].shape
        if is_text_key(name):
            assert name.startswith("base_model.") and torch.equal(tensor, everything[name])
        else:  # the image encoder and IRRA's heads: their shapes only
            assert tensor.is_meta, name
    text_bytes = sum(t.numel() * t.element_size() for n, t in everything.items() if is_text_key(n))
    assert sum(spans) == text_bytes < weights.stat().st_size / 2
    assert any(n.startswith("base_model.visual.") for n in content)
    assert any(n.startswith(("classifier.", "mlm_head.", "cross_modal_transformer.")) for n in content)


def test_text_keys_are_known_in_every_layout():
    for key in ("transformer.resblocks.0.attn.in_proj_weight", "module.base_model.token_embedding.weight",
                "base_model.positional_embedding", "ln_final.bias", "text_projection", "logit_scale",
                "text_model.encoder.layers.0.mlp.fc1.weight", "text_projection.weight"):
        assert is_text_key(key), key
    for key in ("visual.positional_embedding", "base_model.visual.transformer.resblocks.0.ln_1.weight",
                "cross_modal_transformer.resblocks.0.attn.in_proj_weight", "classifier.weight", "mlm_head.fc.weight",
                "vision_model.encoder.layers.0.mlp.fc1.weight", "visual_projection.weight", "ln_pre_t.weight"):
        assert not is_text_key(key), key


def test_towers_must_be_both_or_text(tiny_run):
    for towers in (("image",), (), ("text", "audio"), 3):
        with pytest.raises(InputError, match="towers"):
            load_trained(tiny_run, towers=towers)
    assert load_trained(tiny_run, towers="text").towers == TEXT_ONLY
    assert load_trained(tiny_run, towers=["text", "image"]).towers == ("image", "text")


@pytest.mark.parametrize(("suffix", "dtype"), [(".safetensors", None), (".pth", torch.float16), (".pth", None)])
def test_plain_weights_load_text_only_from_safetensors_and_pickles(tmp_path, suffix, dtype):
    torch.manual_seed(3)
    model = build_clip(TINY_ARCH, image_size=TINY_IMAGE_SIZE, stride=8)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / f"clip{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:  # IRRA's layout: {"model": ...} with the CLIP under base_model. (fp16 as IRRA saves it)
        torch.save({"model": {f"base_model.{k}": v.to(dtype or v.dtype) for k, v in state.items()}}, path)
    full = load_clip(path, image_size=TINY_IMAGE_SIZE, stride=8)
    text = load_clip(path, image_size=TINY_IMAGE_SIZE, stride=8, towers=TEXT_ONLY)
    assert text.visual is None and full.visual is not None
    assert torch.equal(_features(text, 77), _features(full, 77))


def test_a_query_loads_the_text_encoder_and_ranks_as_the_full_model(tiny_index):
    from personsearch.retrieval.index import GalleryIndex
    from personsearch.retrieval.query import model_for_index, run_queries, search_text

    found = run_queries(CAPTIONS, index=tiny_index, k=5, device="cpu")
    assert found.model.towers == TEXT_ONLY
    gallery = GalleryIndex.open(tiny_index)
    full = model_for_index(gallery)
    assert full.towers == ("image", "text")  # a server that also searches by photo
    expected = search_text(full, gallery, CAPTIONS, k=5)
    assert [r.to_json() for r in found.results] == [r.to_json() for r in expected]
    both = run_queries(CAPTIONS, index=tiny_index, k=5, device="cpu", towers=("image", "text"))
    assert both.model.towers == ("image", "text")
    assert [r.to_json() for r in both.results] == [r.to_json() for r in expected]


def test_the_query_command_keeps_image_libraries_unloaded(tiny_index, tmp_path):
    code = (
        "import json, sys\n"
        "from personsearch.cli.app import app\n"
        "sys.argv = ['personsearch', 'query', 'a woman in a red coat', '--index', sys.argv[1], '--json', "
        "'--device', 'cpu']\n"
        "try:\n    app()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "heavy = ['PIL', 'torchvision', 'faiss', 'safetensors', 'personsearch.data.transforms']\n"
        "print(json.dumps({'code': code, 'loaded': [m for m in heavy if m in sys.modules]}), file=sys.stderr)\n"
    )
    env = {**os.environ, weights_trust.CACHE_ENV: str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code, str(tiny_index)], capture_output=True, text=True, env=env,
                          timeout=300)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "loaded": []}, done.stderr
    assert len(json.loads(done.stdout)["results"]) == 10


# ------------------------------------------------------------------------- the hash cache


@pytest.fixture()
def hash_cache(tmp_path, monkeypatch) -> Path:
    """A private hash cache that remembers files of any size; this process's memo starts empty."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(weights_trust.CACHE_ENV, str(folder))
    monkeypatch.setattr(weights_trust, "CACHED_MIN_BYTES", 0)
    monkeypatch.setattr(weights_trust, "_HASHES", {})
    return folder / "weights-sha256.json"


def _new_process(monkeypatch) -> None:
    """Forget what this process verified, as a new process would."""
    monkeypatch.setattr(weights_trust, "_HASHES", {})


def _no_hashing(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the file was hashed again")

    monkeypatch.setattr(weights_trust, "sha256_file", refuse)


def test_a_verified_hash_is_remembered_between_processes(hash_cache, tmp_path, monkeypatch):
    import hashlib

    path = tmp_path / "weights.bin"
    path.write_bytes(b"w" * 4096)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert weights_trust.file_sha256(path)[0] == digest
    assert hash_cache.is_file() and (hash_cache.stat().st_mode & 0o022) == 0
    _new_process(monkeypatch)
    with monkeypatch.context() as patched:
        _no_hashing(patched)
        assert weights_trust.file_sha256(path)[0] == digest


def test_a_rewritten_file_is_hashed_again_even_with_its_old_size_and_mtime(hash_cache, tmp_path, monkeypatch):
    import hashlib

    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 4096)
    weights_trust.file_sha256(path)
    before = path.stat()
    path.write_bytes(b"b" * 4096)  # same inode, same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime: only ctime tells
    _new_process(monkeypatch)
    assert weights_trust.file_sha256(path)[0] == hashlib.sha256(b"b" * 4096).hexdigest()


def test_an_untrusted_or_damaged_cache_is_ignored(hash_cache, tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"c" * 4096)
    digest = weights_trust.file_sha256(path)[0]
    os.chmod(hash_cache, 0o666)  # others could have written it
    _new_process(monkeypatch)
    with monkeypatch.context() as patched:
        _no_hashing(patched)
        with pytest.raises(AssertionError):
            weights_trust.file_sha256(path)
    hash_cache.write_text("{not json")
    os.chmod(hash_cache, 0o644)
    _new_process(monkeypatch)
    assert weights_trust.file_sha256(path)[0] == digest  # hashed again, and the cache rewritten
    assert json.loads(hash_cache.read_text())["version"] == 1


def test_an_empty_cache_setting_turns_the_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv(weights_trust.CACHE_ENV, "")
    monkeypatch.setattr(weights_trust, "CACHED_MIN_BYTES", 0)
    monkeypatch.setattr(weights_trust, "_HASHES", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = tmp_path / "weights.bin"
    path.write_bytes(b"d" * 100)
    weights_trust.file_sha256(path)
    assert weights_trust.hash_cache_file() is None and not (tmp_path / "xdg").exists()


def test_weights_replaced_after_their_hash_was_remembered_are_refused(hash_cache, tiny_run, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    model = load_trained(run, towers=TEXT_ONLY)  # verified, and remembered
    _new_process(monkeypatch)
    assert load_trained(run, towers=TEXT_ONLY).fingerprint == model.fingerprint
    weights = run / "checkpoints" / "best.safetensors"
    state = {k: v + 1 if v.is_floating_point() else v for k, v in
             weight_files.read_weights_file(weights).items()}
    replacement = tmp_path / "other.safetensors"
    save_file(state, str(replacement), metadata={"format": "personsearch-checkpoint"})
    os.replace(replacement, weights)
    _new_process(monkeypatch)
    with pytest.raises(InputError, match="does not match what the run recorded"):
        load_trained(run, towers=TEXT_ONLY)


def test_a_partial_read_gives_every_dtype_as_safetensors_does(tmp_path):
    from safetensors.torch import load_file

    tensors = {"a.f16": torch.randn(3, 2).half(), "a.bf16": torch.randn(4).bfloat16(), "a.i64": torch.arange(5),
               "a.bool": torch.tensor([True, False]), "a.u16": torch.tensor([1, 2, 60000], dtype=torch.uint16),
               "a.scalar": torch.tensor(2.5), "a.empty": torch.zeros(0, 3), "b.skipped": torch.ones(2, 2)}
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    content = weight_files.read_weights_file(path, keep=lambda name: name.startswith("a."))
    expected = load_file(str(path))
    for name, tensor in content.items():
        if name.startswith("a."):
            assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name
        else:
            assert tensor.is_meta and tensor.shape == expected[name].shape


def test_the_query_verb_freezes_the_heap_at_exit_once(tiny_index, monkeypatch):
    import atexit
    import gc

    from typer.testing import CliRunner

    import personsearch.cli.query as verb
    from personsearch.cli.app import app

    registered = []
    monkeypatch.setattr(verb, "_freezing", [])
    monkeypatch.setattr(atexit, "register", registered.append)
    for _ in range(2):
        done = CliRunner().invoke(app, ["query", "a man", "--index", str(tiny_index), "--json", "--device", "cpu"])
        assert done.exit_code == 0, done.output
        assert gc.isenabled()  # paused only while the verb ran
    assert registered == [gc.freeze]


def test_the_cache_forgets_files_that_are_gone(hash_cache, tmp_path):
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(b"1" * 100)
    second.write_bytes(b"2" * 100)
    weights_trust.file_sha256(first)
    first.unlink()
    weights_trust.file_sha256(second)
    assert list(json.loads(hash_cache.read_text())["files"]) == [os.path.realpath(second)]
