"""What a run records of its training data, and what it is for: a query none of whose words the
model saw is flagged, an evaluation on the run's own training images is refused unless forced, and
the commands find a run the demo made under runs/demo/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personsearch.cli.app import app
from personsearch.runs import knows_query, run_training_images, run_vocabulary

runner = CliRunner()


@pytest.fixture(scope="module")
def indexed_run(trained_run: Path, prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("records") / "run"
    shutil.copytree(trained_run, run)
    result = runner.invoke(app, ["export", str(run), "--out", str(run / "index"), "--data", str(prepared_tiny),
                                 "--split", "test", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return run


def test_training_records_the_caption_words_and_the_training_images(trained_run, prepared_tiny):
    from personsearch.data.prepared import PreparedDataset

    prepared = PreparedDataset.load(prepared_tiny)
    vocabulary = run_vocabulary(trained_run)
    captions = [c for entry in prepared.entries("train") for c in entry.captions]
    assert vocabulary and {"woman", "man"} & vocabulary and all(w.isalpha() for w in vocabulary)
    assert all(word in vocabulary for word in captions[0].lower().replace(",", " ").replace(".", " ").split()
               if word.isalpha())
    images = run_training_images(trained_run)
    assert images is not None and len(images) == len({e.path for e in prepared.entries("train")})
    assert knows_query(vocabulary, "qwzx blorf") is False and knows_query(vocabulary, "a qwzx in the blorf") is False
    assert knows_query(vocabulary, "a woman in a red coat") is True and knows_query(None, "qwzx") is None


def test_a_query_with_no_known_word_says_so(indexed_run):
    nonsense = runner.invoke(app, ["query", "qwzx blorf", "--index", str(indexed_run / "index"), "--json"])
    assert nonsense.exit_code == 0, nonsense.output
    assert "no word of this query occurs" in json.loads(nonsense.stdout)["note"]
    assert "no word of this query occurs" in nonsense.stderr
    real = runner.invoke(app, ["query", "a man in a blue jacket", "--index", str(indexed_run / "index"), "--json"])
    assert real.exit_code == 0 and set(json.loads(real.stdout)) == {"query", "results"}
    assert "no word" not in real.stderr


def test_evaluating_on_the_runs_own_training_images_is_refused_unless_forced(indexed_run, synthetic_raw, tmp_path):
    from personsearch.data import prepare_dataset

    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw, raw)
    annotations = json.loads((raw / "reid_raw.json").read_text())
    for item in annotations:  # the run's training images become this dataset's test split
        item["split"] = {"train": "test", "test": "train"}.get(item["split"], item["split"])
    (raw / "reid_raw.json").write_text(json.dumps(annotations))
    other = tmp_path / "other"
    prepare_dataset("CUHK-PEDES", raw, other, workers=1)
    before = (indexed_run / "metrics.jsonl").read_bytes()
    refused = runner.invoke(app, ["eval", str(indexed_run), "--data", str(other), "--device", "cpu"])
    assert refused.exit_code == 2, refused.output
    assert "images" in refused.stderr and "trained on" in refused.stderr and "--force" in refused.stderr
    assert (indexed_run / "metrics.jsonl").read_bytes() == before  # nothing evaluated, nothing logged
    forced = runner.invoke(app, ["eval", str(indexed_run), "--data", str(other), "--force", "--json",
                                 "--device", "cpu"])
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["shared_training_images"] > 0
    own = runner.invoke(app, ["eval", str(indexed_run), "--json", "--device", "cpu"])  # its own test split
    assert own.exit_code == 0 and "shared_training_images" not in json.loads(own.stdout)


def test_query_finds_the_index_of_a_demo_run(indexed_run, tmp_path, monkeypatch):
    from personsearch.io import write_owner_marker
    from personsearch.runs import DEMO_KIND

    demo = tmp_path / "runs" / "demo"
    demo.mkdir(parents=True)
    write_owner_marker(demo, DEMO_KIND)
    shutil.copytree(indexed_run, demo / "run")
    monkeypatch.chdir(tmp_path)
    found = runner.invoke(app, ["query", "a woman in a red coat", "-k", "3", "--json"])
    assert found.exit_code == 0, found.output
    assert "runs/demo/run/index" in found.stderr and len(json.loads(found.stdout)["results"]) == 3
