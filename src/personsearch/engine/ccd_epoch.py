"""RDE's consensus clean-pair division in the training loop (``train.ccd``): each epoch's pair weights.

At the start of an epoch, before its first step, every training pair's TAL is computed under the
global and the token-selection embeddings (evaluation mode, no gradients) in the batches the epoch
will train on, and ``engine.ccd.divide_pairs`` turns the two sets of losses into weights (1 clean,
0 noisy) that the epoch's steps pass to the loss as ``pair_weights`` (every pair kept during the
first ``train.ccd_warmup`` epochs). The weights are saved as
``RUN/ccd/epoch-NNNN.npy`` before the first step: a run resumed inside the epoch reads them back, so
it trains exactly as the uninterrupted run (the model it would recompute them with has moved on).

When the raw dataset records which captions were swapped (``noise.json``, ``prepare synthetic
--noise``), each epoch's division is scored against it: precision and recall of the pairs called
noisy, written to ``metrics.jsonl`` and the log.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from personsearch.engine.ccd import divide_pairs, noise_detection
from personsearch.errors import InputError
from personsearch.losses import tal

log = logging.getLogger(__name__)

#: Where a run keeps its divisions, one file per epoch.
DIVISION_DIR = "ccd"
#: The raw dataset's record of swapped captions (``data.synthetic.writer.NOISE_FILE``).
NOISE_FILE = "noise.json"


def check_ccd(settings: Any) -> None:
    """CCD divides by two embeddings' TAL: it needs model.tse, tal and scikit-learn."""
    if not settings.train.ccd:
        return
    if not settings.model.tse or "tal" not in settings.loss.enabled:
        raise InputError("train.ccd divides pairs by their TAL under both embeddings: it needs model.tse=true and "
                         "tal in loss.names", hint="e.g. --set model.tse=true --set loss.names=tal")
    try:
        import sklearn.mixture  # noqa: F401  (said before training starts, not at the first epoch)
    except ImportError:
        raise InputError("train.ccd needs scikit-learn, which is not installed",
                         hint="pip install 'personsearch[rde]'") from None


def pair_losses(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair TAL [B] of one batch under the global and the token-selection embeddings (RDE's
    ``compute_per_loss``), without gradients."""
    base = model.base_model
    with torch.no_grad():
        image_tokens, class_row = base.encode_image_tokens_attention(batch["images"])
        ids = batch["caption_ids"]
        short = ids[:, : int(ids.argmax(dim=-1).max()) + 1]
        text_tokens, rows = base.encode_text_token_rows(short, 1)
        eot = short.argmax(dim=-1)
        pairs = []
        for image, text in (
            (image_tokens[:, 0], text_tokens[torch.arange(len(eot), device=eot.device), eot]),
            (model.visul_emb_layer(image_tokens, class_row), model.texual_emb_layer(text_tokens, short, rows[-1])),
        ):
            scores = torch.nn.functional.normalize(text.float(), dim=1) @ torch.nn.functional.normalize(
                image.float(), dim=1).t()
            pairs.append(tal(scores, batch["pids"].reshape(-1), tau=model.tal_tau, margin=model.tal_margin))
    return pairs[0], pairs[1]


class EpochDivision:
    """The pair weights of each epoch for one training run."""

    def __init__(self, setup: Any) -> None:
        self.setup = setup
        self.count = len(setup.train_set)
        self.noisy = noisy_pairs(setup.train_set, Path(setup.prepared.raw_root))
        fit = setup.settings.train.ccd_fit
        self.thorough = fit == "thorough" or fit == "auto" and (
            "rstpreid" in str(setup.prepared.name).lower() or self.noise_rate > 0.4)
        self.last: dict[str, Any] | None = None

    @property
    def noise_rate(self) -> float:
        return float(self.noisy.mean()) if self.noisy is not None and self.noisy.size else 0.0

    def weights(self, epoch: int, batches: Iterable[dict[str, Any]] | Callable[[], Iterable[dict[str, Any]]]
                ) -> torch.Tensor:
        """The weights [N] of ``epoch`` (0-based): read back when saved, else computed over ``batches``
        (the epoch's own, already on the device) and saved."""
        if epoch < self.setup.settings.train.ccd_warmup:
            return torch.ones(self.count)
        path = Path(self.setup.run_dir) / DIVISION_DIR / f"epoch-{epoch + 1:04d}.npy"
        saved = _read(path, self.count)
        if saved is not None:
            return torch.from_numpy(saved)
        losses = self._losses(batches() if callable(batches) else batches)
        division = divide_pairs(losses[0], losses[1], self.setup.settings.runtime.seed, epoch, self.thorough)
        record: dict[str, Any] = {"ccd": {"epoch": epoch + 1, "pairs": self.count, "kept": division.kept,
                                          "disagreed": division.disagreed, "thorough": self.thorough}}
        if self.noisy is not None:
            precision, recall = noise_detection(division.weights, self.noisy)
            record["ccd"].update(noise_precision=round(precision, 4), noise_recall=round(recall, 4))
        self.last = record["ccd"]
        if self.setup.info.rank == 0:
            _write(path, division.weights)
            from personsearch.runs import append_metrics

            append_metrics(self.setup.run_dir, record)
            log.info("epoch %d: clean-pair division keeps %d of %d pairs (%d disagreed)%s", epoch + 1, division.kept,
                     self.count, division.disagreed,
                     "" if self.noisy is None else f"; noisy pairs found: precision {record['ccd']['noise_precision']}"
                     f", recall {record['ccd']['noise_recall']}")
        return torch.from_numpy(division.weights)

    def _losses(self, batches: Iterable[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        model = self.setup.model
        was_training = model.training
        model.eval()  # as RDE: BatchNorm's running statistics, nothing updated
        losses = torch.zeros(2, self.count, dtype=torch.float64)
        seen = torch.zeros(self.count, dtype=torch.float64)
        try:
            for batch in batches:
                if "images" not in batch or batch["images"].shape[0] == 0:
                    continue
                a, b = pair_losses(model, batch)
                index = batch["index"].reshape(-1).cpu()
                losses[0, index], losses[1, index] = a.double().cpu(), b.double().cpu()
                seen[index] = 1.0
        finally:
            model.train(was_training)
        if self.setup.info.enabled:  # each pair lives on one rank: the sums are the whole set
            import torch.distributed as dist

            dist.all_reduce(losses)
            dist.all_reduce(seen)
        missing = seen == 0
        if missing.any():  # unreadable images: their pairs cannot be judged; kept at the median
            for row in losses:
                row[missing] = row[~missing].median() if (~missing).any() else 0.0
        return losses[0].numpy(), losses[1].numpy()


def noisy_pairs(train_set: Any, raw_root: Path) -> np.ndarray | None:
    """Which training pairs (``TrainCaptions`` order) ``noise.json`` records as swapped; None without it."""
    path = raw_root / NOISE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        swapped = {(str(item["file_path"]), int(item["caption"])) for item in record["noisy"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s cannot be read (%s): the division is not scored", path, exc)
        return None
    noisy = np.zeros(len(train_set), dtype=bool)
    for index, (position, slot) in enumerate(_pair_places(train_set)):
        entry_path = train_set.entries[position].path  # relative to the raw root; noise.json's to raw/imgs
        inside_imgs = entry_path[len("imgs/"):] if entry_path.startswith("imgs/") else entry_path
        noisy[index] = (inside_imgs, slot) in swapped or (entry_path, slot) in swapped
    return noisy


def _pair_places(train_set: Any) -> Iterable[tuple[int, int]]:
    """(entry position, caption slot) of each training pair, in order."""
    previous, slot = -1, 0
    for position in train_set.caption_entry.tolist():
        slot = slot + 1 if position == previous else 0
        previous = position
        yield position, slot


def _read(path: Path, count: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        weights = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        log.warning("%s cannot be read (%s): the division is computed again", path, exc)
        return None
    if weights.shape != (count,) or not np.isin(weights, (0.0, 1.0)).all():
        log.warning("%s does not hold %d pair weights: the division is computed again", path, count)
        return None
    return weights.astype(np.float32)


def _write(path: Path, weights: np.ndarray) -> None:
    from personsearch.errors import RunFailure
    from personsearch.io import atomic_write_bytes

    if path.parent.is_symlink() or (path.parent.exists() and not path.parent.is_dir()):
        raise RunFailure(f"{path.parent} is not the run's own folder (a link or a file): the division is not "
                         "written through it", hint=f"remove {path.parent} and resume the run")
    buffer = io.BytesIO()
    np.save(buffer, weights.astype(np.float32), allow_pickle=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
