"""A trained model ready for inference, from whatever a user points at: one of our run folders, a
checkpoint file inside one, or an IRRA run folder (``configs.yaml`` + ``best.pth``).

The model fingerprint (a hash of the weights and of every setting that changes an embedding:
image size, stride, text length, tokenizer) is what indexes record, so a query can refuse an
index built by another model. The weights' hash is the one the run recorded when it saved them
(verified against the file; a large file's verified hash is remembered between processes, see
``personsearch.model.weights_trust``), so a query does not re-read the weights to fingerprint them.

Both loaders take ``towers``: ``("image", "text")`` (the default) loads the whole CLIP, what
embedding images needs (export, search by photo); ``("text",)`` loads the text encoder only, what
a text query needs (``personsearch query``): from safetensors weights only its tensors are read.
Its text features are bit-identical to the full model's, and its fingerprint is the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from personsearch.errors import InputError
from personsearch.runs.layout import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    IRRA_CONFIG,
    IRRA_WEIGHTS,
    find_run,
    is_irra_run,
    latest_run,
    load_run_settings,
    read_weights_meta,
)
from personsearch.settings import Settings, resolve_settings

#: Both encoders (``personsearch.model.clip.TOWERS``, named here so that importing runs loads no torch).
TOWERS = ("image", "text")


@dataclass
class TrainedModel:
    clip: Any  # personsearch.model.CLIP, in eval mode
    settings: Settings
    source: Path
    weights: Path
    fingerprint: str
    kind: str  # "run", "irra" or "weights" (plain CLIP weights: zero-shot)
    num_classes: int | None = None  # identities of the checkpoint's classifier (none: no ID head saved)

    @property
    def towers(self) -> tuple[str, ...]:
        """The encoders loaded: ``("image", "text")``, or ``("text",)`` for a text-query-only model."""
        return tuple(self.clip.towers)


def model_fingerprint(weights_sha256: str, settings: Settings) -> str:
    from personsearch.text import default_tokenizer

    preprocessing = {
        "image_size": list(settings.model.image_size), "stride": settings.model.stride,
        "text_length": settings.model.text_length, "tokenizer": default_tokenizer().fingerprint,
    }
    blob = json.dumps({"weights": weights_sha256, "preprocessing": preprocessing}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


class _IrraLoader(yaml.SafeLoader):
    """IRRA dumps its argparse namespace with PyYAML's default dumper: tuples carry a python tag."""


_IrraLoader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))


def irra_settings(config_path: Path) -> Settings:
    """Our settings from an IRRA (or RDE) ``configs.yaml`` (the keys that shape the model and its inputs)."""
    return _settings_from_args(read_irra_config(config_path), config_path)


def read_irra_config(config_path: Path) -> dict[str, Any]:
    """The argparse namespace IRRA's and RDE's ``train.py`` dump as ``configs.yaml``, as a mapping."""
    try:
        args = yaml.load(config_path.read_text(encoding="utf-8"), Loader=_IrraLoader)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise InputError(f"{config_path} is not a readable IRRA configs.yaml ({reason})") from None
    except OSError as exc:
        raise InputError(f"cannot read {config_path}: {exc.strerror or exc}") from None
    if not isinstance(args, dict):
        raise InputError(f"{config_path} is not an IRRA configs.yaml (expected a mapping)")
    return args


#: RDE writes its loss as e.g. ``TAL+sr0.3_tau0.015_margin0.1_n0.2``: loss type, then the select ratio,
#: tau, margin and noise rate in one string.
_RDE_RATIO = re.compile(r"(?:^|[+_])sr([0-9]*\.?[0-9]+)(?:_|$)")


def tse_ratio(args: dict[str, Any], config_path: Path) -> float:
    """The share of tokens RDE's heads select: ``select_ratio``, else the ``srR`` of ``loss_names``, else RDE's 0.3."""
    value: Any = args.get("select_ratio")
    if value is None:
        found = _RDE_RATIO.search(str(args.get("loss_names", ""))[:1000])
        value = found.group(1) if found else 0.3
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{config_path}: select_ratio is {_brief(value)}, not a number") from None
    if not 0 < ratio <= 1:
        raise InputError(f"{config_path}: select_ratio {ratio} is outside (0, 1]")
    return ratio


def _rde_loss(names: str) -> bool:
    return bool(re.search(r"TAL|TRL|InfoNCE|SDM|_", names))


def _settings_from_args(args: dict[str, Any], config_path: Path) -> Settings:
    model: dict[str, Any] = {"pretrained": None}
    # Only scalars (and img_size's two scalars) are taken: a nested value, e.g. an alias bomb of
    # lists, is refused before it is printed or converted (its text form could be gigabytes).
    if "img_size" in args:
        size = args["img_size"]
        if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_scalar(v) for v in size):
            raise InputError(f"{config_path}: img_size is {_brief(size)}, not [height, width]")
        model["image_size"] = list(size)
    for ours, theirs in (("stride", "stride_size"), ("temperature", "temperature"), ("cmt_depth", "cmt_depth"),
                         ("text_length", "text_length"), ("vocab_size", "vocab_size"), ("loss", "loss_names")):
        if theirs in args and not _scalar(args[theirs]):
            raise InputError(f"{config_path}: {theirs} is {_brief(args[theirs])}, not a single value")
        if theirs in args and ours != "loss":
            model[ours] = args[theirs]
    values: dict[str, Any] = {"model": model}
    if "loss_names" in args and not _rde_loss(str(args["loss_names"])[:1000]):  # RDE's: not ours to train with
        values["loss"] = {"names": str(args["loss_names"])}
    return resolve_settings(config=values, environ={})


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool)) and len(str(value)) <= 1000


def _brief(value: Any) -> str:
    """A short description of a YAML value that may be enormous (never its full text)."""
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)} items"
    return repr(str(value)[:40])


def load_trained(
    source: str | Path | None = None, output_dir: str | Path = "runs", which: str = "best",
    *, towers: Sequence[str] = TOWERS,
) -> TrainedModel:
    """Load the CLIP of a trained model for embedding (eval mode, CPU, float32).

    The classifier is not needed to embed; its size is read from the checkpoint (``num_classes``),
    never assumed from a dataset, so a checkpoint of any identity count evaluates anywhere.

    ``source`` is a run folder, a checkpoint inside one, or an IRRA run folder; ``None`` takes the
    most recent run under ``output_dir`` that has weights. ``towers=("text",)``: the text encoder
    only (see the module's notes).
    """
    from personsearch.model.checkpoints import load_checkpoint
    from personsearch.model.rde import has_tse_heads
    from personsearch.model.weights_trust import file_sha256, weights_for_file

    if source is None:
        found = latest_run(output_dir, require=f"{CHECKPOINT_DIR}/last.safetensors")
        if found is None:
            raise InputError(f"no trained run under {output_dir}/", hint="pass --run RUN or train one first")
        source = found
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"model not found: {path}", hint="pass a run folder made by `personsearch train`")
    if is_irra_run(path):
        weights = next((path / name for name in IRRA_WEIGHTS if (path / name).is_file()), None)
        if weights is None:
            raise InputError(f"IRRA run {path} has no best.pth or last.pth")
        args = read_irra_config(path / IRRA_CONFIG)
        settings = _settings_from_args(args, path / IRRA_CONFIG)
        loaded = load_checkpoint(weights, image_size=settings.model.image_size, stride=settings.model.stride,
                                 towers=towers)
        digest = file_sha256(weights)[0]
        ratio = tse_ratio(args, path / IRRA_CONFIG) if has_tse_heads(loaded.heads) else None
        clip, digest = _with_tse(loaded, digest, ratio, settings, towers)
        return TrainedModel(clip, settings, path, weights, model_fingerprint(digest, settings), "irra",
                            loaded.num_classes)
    run = find_run(path)
    if run is None:
        raise InputError(f"{path} is not a run folder (no {CONFIG_FILE} beside its checkpoints)",
                         hint="pass a folder made by `personsearch train`, or an IRRA run with configs.yaml")
    settings = load_run_settings(run)
    if path.is_file():  # a checkpoint inside the run: verified against its record, when it has one
        weights, meta = weights_for_file(path)
    else:
        weights, meta = read_weights_meta(run, which)
    loaded = load_checkpoint(weights, image_size=settings.model.image_size, stride=settings.model.stride,
                             towers=towers)
    digest = (meta or {}).get("weights_sha256") or file_sha256(weights)[0]
    clip, digest = _with_tse(loaded, digest, settings.model.tse_ratio if has_tse_heads(loaded.heads) else None,
                             settings, towers)
    return TrainedModel(clip, settings, run, weights, model_fingerprint(digest, settings), "run", loaded.num_classes)


def _with_tse(
    loaded: Any, digest: str, ratio: float | None, settings: Settings, towers: Sequence[str]
) -> tuple[Any, str]:
    """The checkpoint's CLIP, or (``ratio`` given: it holds RDE's token-selection heads) the CLIP with
    those heads as one encoder of RDE's joint "BGE+TSE" embeddings; and the weights' digest, which
    then also names the ratio (it changes every embedding, as the weights do)."""
    from personsearch.model.rde import TokenSelectionCLIP, heads_from_state

    clip = loaded.clip.eval()
    if ratio is None:
        return clip, digest
    image_head, text_head = heads_from_state(loaded.heads, clip.embed_dim, ratio, settings.model.text_length,
                                             image="image" in towers)
    return TokenSelectionCLIP(clip, image_head, text_head).eval(), f"{digest}+tse:{ratio}"


def load_weights(
    source: str | Path,
    image_size: tuple[int, int] | list[int] | None = None,
    stride: int | None = None,
    text_length: int | None = None,
    *,
    towers: Sequence[str] = TOWERS,
) -> TrainedModel:
    """A model for zero-shot search from plain CLIP weights (a file, a folder or a model name such
    as ViT-B/16: anything ``load_clip`` reads), without a trained run. Image size, stride and text
    length default to the settings' defaults (IRRA's 384x128, 16, 77); the fingerprint hashes the
    weights file(s) with them, as for a run. ``towers=("text",)`` reads only the text encoder's
    tensors from a ``.safetensors`` file; other formats are read whole, their image encoder dropped."""
    from personsearch.model import load_checkpoint
    from personsearch.model.weights_trust import file_sha256

    overrides = {"model.image_size": list(image_size) if image_size is not None else None, "model.stride": stride,
                 "model.text_length": text_length, "model.pretrained": str(source)}
    settings = resolve_settings(overrides=overrides, environ={})
    model = settings.model
    loaded = load_checkpoint(source, image_size=model.image_size, stride=model.stride,
                             context_length=model.text_length, towers=towers)
    path = loaded.path
    if path.is_dir():  # a Hugging Face folder: every regular file it holds, by name
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.is_symlink())
        digest = hashlib.sha256("".join(f"{p.name}:{file_sha256(p)[0]};" for p in files).encode()).hexdigest()
    else:
        digest = file_sha256(path)[0]
    resolved = Path(os.path.abspath(path))
    return TrainedModel(loaded.clip.eval(), settings, resolved, resolved, model_fingerprint(digest, settings),
                        "weights", loaded.num_classes)
