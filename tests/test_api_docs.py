"""docs/api.md cannot rot: its ```python blocks run here, in order, in one namespace.

The page's ```python setup block names what a reader provides (RUN, DATA, ...); this test provides
the same names from the session fixtures (a copy of the tiny trained run, since evaluation and
export write into a run) and checks the two lists agree.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import shutil
from pathlib import Path

import pytest
from tests.helpers import TINY_ARCH, TINY_SETS

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)


def blocks(info: str) -> list[str]:
    """The bodies of the fenced blocks whose info string is exactly ``info``."""
    return [body for fence, body in FENCE.findall(DOC.read_text(encoding="utf-8")) if fence.strip() == info]


def assigned_names(source: str) -> set[str]:
    tree = ast.parse(source)
    return {target.id for node in tree.body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def save_plain_clip(path: Path) -> None:
    """A tiny CLIP state dict with a square position grid, as OpenAI's (224x224, patch 16)."""
    from safetensors.torch import save_file

    from personsearch.model import build_clip

    clip = build_clip(dict(TINY_ARCH, patch_size=16), image_size=(224, 224), stride=16)
    save_file({key: value.contiguous() for key, value in clip.state_dict().items()}, str(path))


def test_setup_block_names_what_the_snippets_assume():
    (setup,) = blocks("python setup")
    assert assigned_names(setup) == {"RUN", "DATA", "IMAGES", "WEIGHTS", "CONFIG", "WORK"}


def test_api_snippets_run(trained_run: Path, prepared_tiny: Path, synthetic_raw: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch):
    from personsearch.settings import resolve_settings

    snippets = blocks("python")
    assert len(snippets) >= 8, "docs/api.md lost its snippets"
    for var in [name for name in os.environ if name.startswith("PERSONSEARCH_")]:
        monkeypatch.delenv(var)  # the reader's environment would change the settings plan_run resolves
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(trained_run, run)
    config = tmp_path / "tiny.yaml"
    config.write_text(resolve_settings(sets=TINY_SETS, environ={}).to_yaml(), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    weights = tmp_path / "clip.safetensors"
    save_plain_clip(weights)
    namespace = {
        "__name__": "api_docs",
        "RUN": run,
        "DATA": prepared_tiny,
        "IMAGES": synthetic_raw / "imgs",
        "WEIGHTS": str(weights),
        "CONFIG": config,
        "WORK": work,
    }
    before = set(tmp_path.iterdir())
    for number, source in enumerate(snippets, 1):
        code = compile(source, f"docs/api.md snippet {number}", "exec")
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code, namespace)  # noqa: S102 (the page's own code)
    assert set(tmp_path.iterdir()) == before, "a snippet wrote outside WORK and RUN"

    # What the page says the snippets produce.
    assert (work / "zero-shot-index").is_dir() and len(namespace["found"].results[0].results) == 5
    assert (work / "crops-index").is_dir() and (work / "test-index").is_dir() and (work / "hits.png").is_file()
    assert namespace["report"].indexed == len(namespace["files"])
    metrics, evaluation = namespace["metrics"], namespace["evaluation"]
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        assert metrics[key] == pytest.approx(evaluation.result.t2i[key], abs=1e-4)
    assert namespace["result"].run_dir == work / "runs" / "agm-from-python"
    assert (work / "runs" / "agm-from-python" / "checkpoints" / "best.safetensors").is_file()
    assert namespace["plain_features"].shape[0] == 1


def test_the_retrieval_package_names_every_entry_point_without_loading_torch():
    import subprocess
    import sys

    import personsearch.retrieval as retrieval

    assert {"run_queries", "search_text", "export_run", "embed_texts", "embed_images", "QueryResult"} <= set(
        retrieval.__all__)
    assert all(getattr(retrieval, name) is not None for name in retrieval.__all__)
    probe = "import sys, personsearch.retrieval; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
