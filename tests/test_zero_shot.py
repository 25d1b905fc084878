"""Zero-shot search with plain CLIP weights, no trained run: export and query take the weights
(any source load_clip reads), the index records them, and a query finds them again."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tests.helpers import TINY_ARCH, TINY_IMAGE_SIZE

from personsearch.errors import InputError
from personsearch.model import build_clip
from personsearch.retrieval.export import export_run
from personsearch.retrieval.query import run_queries

SETS = [f"model.image_size={list(TINY_IMAGE_SIZE)}", "model.stride=8"]


def _weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_clip(TINY_ARCH, image_size=TINY_IMAGE_SIZE, stride=8)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def zero_shot_index(synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("zero_shot")
    weights = _weights(folder / "clip.safetensors", seed=0)
    report = export_run(None, folder / "index", images=synthetic_raw / "imgs", weights=weights, sets=SETS,
                        device="cpu")
    assert report.indexed > 10
    return weights, folder / "index"


def test_an_index_made_from_plain_weights_is_searched_with_them(zero_shot_index):
    weights, index = zero_shot_index
    found = run_queries(["a woman in a red coat"], index=index, k=5, device="cpu")
    assert found.model.kind == "weights" and found.model.weights == weights.resolve()
    assert len(found.results[0].results) == 5 and found.results[0].known_words is None
    given = run_queries(["a woman in a red coat"], index=index, weights=weights, k=5, device="cpu")
    assert [h.path for h in given.results[0].results] == [h.path for h in found.results[0].results]


def test_other_weights_are_refused_for_that_index(zero_shot_index, tmp_path):
    _, index = zero_shot_index
    other = _weights(tmp_path / "other.safetensors", seed=1)
    with pytest.raises(InputError, match="another model"):
        run_queries(["a man"], index=index, weights=other, device="cpu")
    with pytest.raises(InputError, match="not both"):
        run_queries(["a man"], index=index, weights=other, run=tmp_path, device="cpu")


def test_the_cli_indexes_and_searches_with_plain_weights(synthetic_raw, tmp_path):
    import json

    from typer.testing import CliRunner

    from personsearch.cli.app import app

    runner = CliRunner()
    weights = _weights(tmp_path / "clip.safetensors", seed=0)
    sets = [arg for item in SETS for arg in ("--set", item)]
    made = runner.invoke(app, ["export", "--out", str(tmp_path / "index"), "--images", str(synthetic_raw / "imgs"),
                               "--weights", str(weights), *sets, "--json"])
    assert made.exit_code == 0, made.output
    found = runner.invoke(app, ["query", "a man in a blue jacket", "--index", str(tmp_path / "index"), "-k", "4",
                                "--weights", str(weights), "--json"])
    assert found.exit_code == 0, found.output
    assert len(json.loads(found.stdout)["results"]) == 4
    neither = runner.invoke(app, ["export", "--out", str(tmp_path / "other"), "--images", str(synthetic_raw)])
    assert neither.exit_code == 2 and "--weights" in neither.stderr
