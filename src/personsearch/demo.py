"""The whole flow on data the tool draws itself: synthetic dataset → prepare → train a small
CLIP-IRRA from scratch → evaluate → export the test gallery → answer a query with a sheet.

No download and no pretrained weights, so it runs anywhere; the settings are the packaged
``demo.yaml`` (a copy of ``configs/demo.yaml``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from personsearch.engine.train import TrainCallbacks, train
from personsearch.errors import InputError, Interrupted
from personsearch.io import atomic_write_json, ensure_replaceable, ensure_writable, write_owner_marker
from personsearch.runs import DEMO_KIND
from personsearch.settings import Settings, resolve_settings

#: What the demo searches for when the test gallery holds enough such people (``demo_query``;
#: otherwise a combination it holds more often, phrased the same way).
DEMO_QUERY = "a woman in a red coat"
DEMO_CONFIG = "demo.yaml"
#: Training budget (wall minutes) per run: with drawing (~15 s), export and query (~1 s) the whole
#: demo fits in 10 minutes on 2 CPU cores (benchmarks/bench_demo.py; benchmarks/demo_tuning.md).
DEMO_MINUTES = 8.5
#: Losses of ``--compare-masking``: masking only matters with the MLM branch, which the demo's
#: own settings leave out for speed (the attribute loss stays, as in the demo's own run).
COMPARE_LOSSES = "sdm+mlm+id+attr"
#: Everything a demo folder holds; an unmarked folder (from an older version) is recognised as a
#: demo only when it holds nothing else and its data carries the demo's own record.
_DEMO_ENTRIES = {"data", "run", "run-random", "run-attention", "query.png", ".lock", ".personsearch.json"}


def demo_settings(sets: list[str] | None = None) -> Settings:
    """The packaged demo settings, with optional ``section.key=value`` overrides."""
    config = resources.files("personsearch").joinpath(DEMO_CONFIG)
    with resources.as_file(config) as path:
        return resolve_settings(config=path, sets=sets or [], environ={})


@dataclass
class DemoRun:
    masking: str
    run: Path
    metrics: dict[str, float]
    steps: int
    epochs: int
    seconds: float
    stopped: str = "finished"  # or max_minutes: the time budget cut training short


@dataclass
class DemoResult:
    out: Path
    data: Path
    runs: list[DemoRun]
    index: Path | None = None
    sheet: Path | None = None
    query: str = DEMO_QUERY
    top: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    matching: int | None = None  # hits among the top 10 with every attribute the query names
    named: dict[str, str] = field(default_factory=dict)  # the attributes the query names
    suggestions: list[str] = field(default_factory=list)  # more queries the test gallery can answer
    holders: int | None = None  # test gallery images with every attribute the query names

    def to_json(self) -> dict[str, Any]:
        main = self.runs[-1]
        summary: dict[str, Any] = {
            "run": str(main.run), "index": str(self.index) if self.index else None,
            "sheet": str(self.sheet) if self.sheet else None, "data": str(self.data),
            "metrics": main.metrics, "seconds": round(self.seconds, 1), "query": self.query,
            "stopped": main.stopped, "matching_hits": self.matching, "gallery_holders": self.holders,
            "named_attributes": self.named,
            "suggestions": self.suggestions,
        }
        if len(self.runs) > 1:
            summary["compare"] = {r.masking: {"run": str(r.run), "metrics": r.metrics} for r in self.runs}
        return summary


@dataclass
class DemoHooks:
    """Progress hooks for the CLI (the library never prints)."""

    on_stage: Callable[[str], None] | None = None
    train: Callable[[str], TrainCallbacks] | None = None  # masking -> callbacks
    on_data_progress: Callable[[int, int], None] | None = None


def _stage(hooks: DemoHooks, text: str) -> None:
    if hooks.on_stage:
        hooks.on_stage(text)


def prepare_demo_data(out: Path, ids: int, seed: int, workers: int,
                      progress: Callable[[int, int], None] | None = None) -> Path:
    """Draw and prepare the synthetic set once; a rerun with the same size and seed reuses it
    (unless the drawing changed since: ``DRAWING_VERSION``)."""
    from personsearch.data import prepare_dataset
    from personsearch.data.prepared import PreparedDataset
    from personsearch.data.synthetic import generate_raw_dataset
    from personsearch.data.synthetic.renderer import DRAWING_VERSION

    data = out / "data"
    marker = data / "demo-data.json"
    wanted = {"ids": ids, "seed": seed, "drawing": DRAWING_VERSION}
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == wanted:
                PreparedDataset.load(data)
                return data
        except (InputError, json.JSONDecodeError, OSError):
            pass
    raw = data / "raw"
    generate_raw_dataset(raw, ids=ids, seed=seed, workers=max(1, workers), progress=progress)
    report = prepare_dataset("CUHK-PEDES", raw, data, workers=max(1, workers))
    if report.problems:
        raise InputError(f"the synthetic dataset has {len(report.problems)} problems: {report.problems[0]}")
    atomic_write_json(marker, wanted)
    return data


def run_demo(
    out: str | Path = "runs/demo",
    minutes: float | None = DEMO_MINUTES,
    seed: int = 0,
    masking: str = "attention",
    compare_masking: bool = False,
    ids: int = 800,
    workers: int = 2,
    sets: list[str] | None = None,
    query: str | None = None,
    hooks: DemoHooks | None = None,
) -> DemoResult:
    """Run every stage under ``out``; ``minutes`` caps each training run's wall time. ``query``
    (default: "a woman in a red coat", or a combination the test gallery holds when it has no
    such person) is answered with a contact sheet whose hits are marked by whether they have every
    attribute it names."""
    from personsearch.data.prepared import PreparedDataset
    from personsearch.data.synthetic import parse_query
    from personsearch.io import RunLock
    from personsearch.retrieval.export import export_images
    from personsearch.retrieval.query import (
        attribute_matches,
        gallery_attributes,
        gallery_holders,
        render_query_sheet,
        search_text,
    )
    from personsearch.runs import INDEX_DIR, load_trained

    hooks = hooks or DemoHooks()
    if masking not in ("attention", "random"):
        raise InputError(f"--masking {masking!r}: choose attention or random")
    if ids < 8:
        raise InputError(f"--ids {ids}: the demo needs at least 8 identities to split train/val/test")
    started = time.monotonic()
    out = Path(out)
    ensure_writable(out, option="--out")
    ensure_replaceable(out, DEMO_KIND, "demo folder", legacy=_is_legacy_demo)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        _check_own_entries(out)
        write_owner_marker(out, DEMO_KIND)
        _stage(hooks, f"drawing and preparing the synthetic dataset ({ids} identities)")
        data = prepare_demo_data(out, ids, seed, workers, hooks.on_data_progress)
        prepared = PreparedDataset.load(data)

        strategies = ["random", "attention"] if compare_masking else [masking]
        runs: list[DemoRun] = []
        for strategy in strategies:
            extra = [f"masking.strategy={strategy}", f"runtime.seed={seed}", f"data.root={data.resolve()}",
                     f"runtime.output_dir={out}", f"data.workers={workers}"]
            if minutes is not None:
                extra.append(f"train.max_minutes={minutes}")
            if compare_masking:
                extra.append(f"loss.names={COMPARE_LOSSES}")  # the user's --set loss.names still wins
            settings = demo_settings(extra + list(sets or []))
            settings.train.batch_size = min(settings.train.batch_size, _train_captions(prepared))
            name = f"run-{strategy}" if compare_masking else "run"
            losses = settings.loss.names
            detail = f"{strategy} masking" if "mlm" in settings.loss.enabled else f"{losses}, no MLM branch"
            _stage(hooks, f"training a small CLIP-IRRA from scratch ({detail})")
            run_dir = out / name
            _clear_previous(run_dir)  # training starts it anew, under its lock
            tick = time.monotonic()
            callbacks = hooks.train(strategy) if hooks.train else None
            result = train(settings, data, run_dir, callbacks=callbacks)
            if result.stopped == "interrupted":
                raise Interrupted(f"the demo was interrupted while training ({run_dir} holds the state so far)",
                                  signal=result.signal or 2)
            shown = result.final or result.best or result.last  # the selected checkpoint on the test split
            runs.append(DemoRun(strategy, run_dir, shown, result.steps, result.epochs, time.monotonic() - tick,
                                result.stopped))

        main = runs[-1]
        _stage(hooks, "exporting the test gallery into a searchable index")
        model = load_trained(main.run)
        index = main.run / INDEX_DIR
        export_images(model, index, prepared=prepared, split="test", workers=workers)
        query = query or demo_query(prepared, seed)
        _stage(hooks, f"searching: {query!r}")
        results = search_text(model, index, [query], k=10)
        gallery = _open_index(index)
        sheet = out / "query.png"
        render_query_sheet(gallery, results, sheet)
        top = [{"rank": hit.rank, "score": hit.score, "path": hit.path, "pid": hit.pid} for hit in results[0].results]
        known = gallery_attributes(gallery)  # read once for both counts
        flags = attribute_matches(gallery, results[0], known) if known is not None else None
        holders = gallery_holders(gallery, query, known) if known is not None else None
    more = [text for text in gallery_queries(prepared, seed + 1, 3) if text != query][:2]
    return DemoResult(out, data, runs, index, sheet, query, top, time.monotonic() - started,
                      sum(flags) if flags is not None else None, parse_query(query), more, holders=holders)


#: How many test images a demo question should have as right answers, most wanted first: 10 lets
#: every hit of the top 10 be right, so "k of 10 match" measures the search, not the gallery.
_WANTED_HOLDERS = (10, 5, 1)


def demo_query(prepared: Any, seed: int = 0) -> str:
    """A question the test gallery answers as fully as it can: "a woman in a red coat" when at
    least 10 of its images are such a person, else a combination of the same kind (gender + upper
    garment colour and type, perhaps the lower garment or the bag) that 10 hold, else 5, else 1
    (the red coat again when it is held as often). The demo's question always has a right answer."""
    from personsearch.data.synthetic import load_attributes, matches, parse_query, queries_from_gallery

    attributes = load_attributes(prepared.raw_root)
    paths = [entry.path for entry in prepared.entries("test")]
    wanted = parse_query(DEMO_QUERY)
    held = sum(matches(wanted, attributes.get(path)) for path in paths)
    for least in _WANTED_HOLDERS:
        if held >= least:
            return DEMO_QUERY
        built = queries_from_gallery(attributes, paths, 1, seed, min_holders=least)
        if built:
            return built[0][0]
    return DEMO_QUERY


def gallery_queries(prepared: Any, seed: int, count: int) -> list[str]:
    """``count`` queries built from attribute combinations the test gallery holds, those held by
    the most images (10, else 5, else 1) first."""
    from personsearch.data.synthetic import load_attributes, queries_from_gallery

    attributes = load_attributes(prepared.raw_root)
    paths = [entry.path for entry in prepared.entries("test")]
    found: list[str] = []
    for least in _WANTED_HOLDERS:
        for text, _ in queries_from_gallery(attributes, paths, count, seed, min_holders=least):
            if len(found) < count and text not in found:
                found.append(text)
    return found


def _is_legacy_demo(folder: Path) -> bool:
    names = {child.name for child in folder.iterdir()}
    record = folder / "data" / "demo-data.json"
    if not names <= _DEMO_ENTRIES or not record.is_file():
        return False
    value = json.loads(record.read_text(encoding="utf-8"))
    return isinstance(value, dict) and set(value) == {"ids", "seed"}


def _check_own_entries(out: Path) -> None:
    """A rerun clears and rewrites the demo's folders in place: one of them replaced by a symlink
    would send the new data, checkpoints or index into the folder it points to (and clear that)."""
    from personsearch.runs import INDEX_DIR, check_run_files

    for name in ("data", "data/raw", "run", "run-random", "run-attention"):
        path = out / name
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise InputError(f"{path} is {'a symbolic link' if path.is_symlink() else 'not a folder'}: the demo "
                             "writes its own folder there and never writes through a link",
                             hint=f"move {path} away, or choose a new --out; nothing was changed")
        if name.startswith("run") and path.is_dir():
            check_run_files(path)
            index = path / INDEX_DIR
            if index.is_symlink():
                raise InputError(f"{index} is a symbolic link: the demo writes its own index there",
                                 hint=f"move {index} away, or choose a new --out; nothing was changed")


def _train_captions(prepared: Any) -> int:
    return sum(len(entry.captions) for entry in prepared.entries("train"))


def _clear_previous(run_dir: Path) -> None:
    """A rerun of the demo trains afresh: drop what the previous run wrote (and only that: a file
    the user added keeps the folder, and training then refuses to reuse it)."""
    import shutil

    from personsearch.io import OWNER_MARKER
    from personsearch.runs import (
        CHECKPOINT_DIR,
        CONFIG_FILE,
        INDEX_DIR,
        LOG_FILE,
        METRICS_FILE,
        TRAIN_IMAGES_FILE,
        VOCABULARY_FILE,
    )

    if not run_dir.is_dir():
        return
    for name in (CHECKPOINT_DIR, INDEX_DIR):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in (METRICS_FILE, LOG_FILE, CONFIG_FILE, VOCABULARY_FILE, TRAIN_IMAGES_FILE, OWNER_MARKER):
        (run_dir / name).unlink(missing_ok=True)


def _open_index(path: Path) -> Any:
    from personsearch.retrieval.index import GalleryIndex

    return GalleryIndex.open(path)
