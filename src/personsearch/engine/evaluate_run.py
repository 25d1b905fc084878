"""``personsearch eval`` as one call: a trained model (any folder ``load_trained`` reads) on a
prepared split, its result appended to the run's metrics.jsonl, with an optional contact sheet."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personsearch.engine.evaluate import EvalResult
from personsearch.errors import InputError


@dataclass
class RunEvaluation:
    result: EvalResult
    model: Any  # personsearch.runs.TrainedModel
    prepared: Any  # personsearch.data.prepared.PreparedDataset
    split: str
    unmatched: str
    queries: int  # captions of the split (the queries ranked)
    seconds: float
    sheet: Path | None = None
    shared_training_images: int = 0  # split images the run trained on (evaluated anyway with force)
    precision: str = "fp32"  # what the embeddings ran at (``auto`` resolved)
    precision_reason: str = "as asked"

    def to_json(self) -> dict[str, Any]:
        result, i2t = self.result, bool(self.result.i2t)
        return {"t2i": result.t2i, **({"i2t": result.i2t} if i2t else {}), "split": self.split,
                "precision": self.precision, "precision_reason": self.precision_reason,
                "data": self.prepared.fingerprint, "skipped_images": result.info.get("skipped_images", 0),
                "queries_without_match": result.info.get("queries_without_match", 0),
                "unmatched": self.unmatched,
                **({"i2t_queries_without_match": result.info["i2t_queries_without_match"]} if i2t else {}),
                **({"sheet": str(self.sheet)} if self.sheet else {}),
                **({"shared_training_images": self.shared_training_images} if self.shared_training_images else {})}


def evaluate_run(
    run: str | Path,
    *,
    data: str | Path | None = None,
    split: str | None = None,
    unmatched: str | None = None,
    i2t: bool = False,
    sheet: str | Path | None = None,
    sheet_queries: int = 8,
    precision: str = "auto",
    batch_size: int | None = None,
    device: str = "auto",
    workers: int | None = None,
    force: bool = False,
    compile: bool | None = None,
    on_total: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> RunEvaluation:
    """Evaluate text→image retrieval (and image→text with ``i2t``) of ``run`` on ``data`` (default:
    the run's dataset) ``split`` (default: the run's eval.split). Every input, the sheet path
    included, is checked before anything is embedded; the result is appended to a run of ours'
    metrics.jsonl (never to an IRRA run's folder). A split that shares images with the run's
    training split is refused (its figures would be inflated) unless ``force``. ``precision``:
    fp32, bf16, fp16 (CUDA) or auto (what is fast on this machine; the result says which).
    ``compile``: run the image encoder through ``torch.compile`` (default: the run's runtime.compile)."""
    from personsearch.accel import resolve_device, resolve_precision
    from personsearch.data.prepared import PreparedDataset
    from personsearch.engine.evaluate import evaluate_split, sheet_rows  # looked up per call (tests replace it)
    from personsearch.model.compiled import check_compile_support, compiled_image_encoder
    from personsearch.runs import append_metrics, load_trained
    from personsearch.sheet import check_sheet_path, check_sheet_target, render_contact_sheet

    if split is not None and split not in ("test", "val"):
        raise InputError(f"--split {split!r}: choose test or val")
    if unmatched is not None and unmatched not in ("exclude", "miss"):
        raise InputError(f"--unmatched {unmatched!r}: choose exclude or miss")
    if sheet is not None:
        check_sheet_path(sheet, "--sheet")  # before the evaluation, not after it
    model = load_trained(run)
    settings = model.settings
    split = split or settings.eval.split
    if unmatched is not None:
        settings.eval.unmatched = unmatched  # type: ignore[assignment]
    if workers is not None:
        settings.data.workers = workers
    data_dir = data or (Path(settings.data.root) if settings.data.root else None)
    if data_dir is None:
        raise InputError(f"{run} does not record its dataset", hint="pass --data PREPARED")
    prepared = PreparedDataset.load(data_dir)
    if sheet is not None:  # never over the dataset, its images, the weights or the run's files
        check_sheet_target(sheet, owned=[("the prepared dataset", data_dir), ("the raw dataset", prepared.raw_root),
                                         ("the weights", model.weights)], runs=[("the run", model.source)])
    shared = 0 if model.kind != "run" else _shared_training_images(model.source, prepared, split)
    if shared and not force:
        raise InputError(
            f"{shared} of the {split} images of {prepared.path} are images {model.source} was trained on: "
            "its figures there would be inflated",
            hint="evaluate on data the run did not train on, or pass --force to evaluate anyway",
        )
    torch_device = resolve_device(device)
    chosen = resolve_precision(precision, torch_device)
    precision = chosen.precision
    compile = settings.runtime.compile if compile is None else compile
    if compile:
        check_compile_support(torch_device)
    model.clip.to(torch_device)
    queries = len(prepared.caption_tokens(split))
    if on_total is not None:
        on_total(queries + len(prepared.entries(split)))
    started = time.monotonic()
    with compiled_image_encoder(model.clip, torch_device, enabled=compile) as clip:
        result = evaluate_split(clip, prepared, split, settings, device=torch_device, precision=precision,
                                i2t=i2t, batch_size=batch_size, keep_similarity=sheet is not None, progress=progress)
    seconds = time.monotonic() - started
    record = {"eval": split, "data": prepared.fingerprint, "weights": model.weights.name,
              "precision": precision, "t2i": result.t2i, **({"i2t": result.i2t} if i2t else {}),
              "seconds": round(seconds, 2), **result.info,
              **({"shared_training_images": shared} if shared else {})}
    if model.kind == "run":
        append_metrics(model.source, record)
    if sheet is not None:
        rows = sheet_rows(result, prepared.raw_root, queries=sheet_queries, seed=settings.runtime.seed)
        render_contact_sheet(rows, sheet, title=f"{model.source.name} on {prepared.name} {split}: "
                                                f"R1 {result.t2i['R1']:.2f}")
    return RunEvaluation(result, model, prepared, split, settings.eval.unmatched, queries, seconds,
                         Path(sheet) if sheet is not None else None, shared, precision, chosen.reason)


def _shared_training_images(run: Path, prepared: Any, split: str) -> int:
    """How many of ``split``'s images the run recorded as training images (0 when it recorded none)."""
    from personsearch.runs import run_training_images, split_image_keys

    trained_on = run_training_images(run)
    return len(trained_on & split_image_keys(prepared, split)) if trained_on else 0
