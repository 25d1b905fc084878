"""IRRA: a CLIP backbone with an identity classifier and a cross-modal masked-language branch.

Module names follow IRRA's ``model/build.py`` (``base_model``, ``classifier``, ``cross_attn``,
``cross_modal_transformer``, ``ln_pre_t``, ``ln_pre_i``, ``ln_post``, ``mlm_head``) so IRRA
checkpoints load by name and the optimizer's parameter groups can match on them. With the optional
``attr`` loss (not IRRA's: auxiliary attribute supervision for a dataset that records per-image
attributes) one more head, ``attr_head``, classifies the attributes from both global features.

Where this forward is faster than IRRA's, and whether it is exact:

- The text pass for the matching losses runs on the batch cut to its longest caption. Exact: the
  text encoder is causal, so every position up to EOT (the feature and the EOT attention row)
  depends only on earlier tokens.
- The MLM head runs only at masked positions. Exact: it acts on each position independently and
  the loss and accuracy only read masked positions.
- By default the masked caption is encoded and passed through the cross-modal transformer at the
  full caption length, as IRRA does (its blocks attend over all positions, padding included, so
  cutting them changes the result). ``mlm_trim=True`` (``loss.mlm_trim``) cuts this branch to the
  longest caption too: faster, but padding positions then no longer take part.

``irra_masked_matching=True`` (``loss.irra_masked_matching``, with the MLM loss) reproduces IRRA's
code, whose masking writes into the caption array: SDM/ITC/CMPM/ID read the text feature of the
masked caption, from the masked pass the MLM branch runs anyway (one text pass instead of two).
Under AGM the importance still comes from the clean caption, in a gradient-free pass whose features
go unused (two passes, as with clean matching).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from personsearch.errors import InputError
from personsearch.losses import attr_loss, cmpm_loss, id_loss, itc_loss, mlm_loss, sdm_loss, tal
from personsearch.model.clip import CLIP, Attention, QuickGELU, Transformer
from personsearch.model.factory import clip_from_settings
from personsearch.model.rde import TokenSelectionCLIP
from personsearch.model.transformer import average_rows
from personsearch.model.tse import ImageTokenSelection, TextTokenSelection
from personsearch.settings import LOSS_NAMES, MaskingSettings
from personsearch.text.masking import mask_captions

if TYPE_CHECKING:
    from personsearch.settings import Settings

__all__ = ["IRRA", "CrossAttention", "build_irra"]

logger = logging.getLogger(__name__)


class CrossAttention(Attention):
    """Multi-head attention from text queries to image keys/values, with ``nn.MultiheadAttention``'s
    parameter names (``in_proj_weight``, ``in_proj_bias``, ``out_proj``), run through SDPA."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__(width, heads)
        self.width = width

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """``query`` [B, Tq, C] attends to ``key``/``value`` [B, Tk, C]; returns [B, Tq, C]."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        batch, head_dim = query.shape[0], self.width // self.heads

        def heads(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
            return F.linear(x, weight, bias).view(batch, x.shape[1], self.heads, head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(query, w_q, b_q), heads(key, w_k, b_k), heads(value, w_v, b_v)
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, query.shape[1], self.width))


class IRRA(nn.Module):
    """CLIP + the heads of the enabled losses; ``forward`` returns every loss and IRRA's accuracies."""

    def __init__(
        self,
        base_model: CLIP,
        num_classes: int,
        losses: Sequence[str] = ("sdm", "mlm", "id"),
        loss_weights: Mapping[str, float] | None = None,
        temperature: float = 0.02,
        cmt_depth: int = 4,
        vocab_size: int | None = None,
        masking: MaskingSettings | None = None,
        image_ids: bool = False,
        image_id_factor: float = 0.3,
        mlm_trim: bool = False,
        irra_masked_matching: bool = False,
        freeze_logit_scale: bool = False,
        feature_gather: Callable[[Tensor], Tensor] | None = None,
        num_attributes: int = 0,
        tal_tau: float = 0.015,
        tal_margin: float = 0.1,
        tse: bool = False,
        tse_ratio: float = 0.3,
        tse_dim: int = 1024,
    ) -> None:
        super().__init__()
        unknown = [name for name in losses if name not in LOSS_NAMES]
        if unknown or not losses:
            raise InputError(
                f"unknown loss {unknown[0]!r}" if unknown else "no loss enabled",
                hint=f"choose from {', '.join(LOSS_NAMES)}",
            )
        if "id" in losses and num_classes < 1:
            raise InputError(f"the identity loss needs at least one identity, got num_classes={num_classes}")
        if "attr" in losses and num_attributes < 1:
            raise InputError(
                "the attribute loss (attr) needs per-image attribute labels, and this dataset has none",
                hint="drop attr from loss.names (only the synthetic set records attributes)",
            )
        if temperature <= 0:
            raise InputError(f"temperature must be positive, got {temperature}")
        self.losses = tuple(dict.fromkeys(losses))
        self.loss_weights = {name: float((loss_weights or {}).get(name, 1.0)) for name in self.losses}
        self.num_classes = int(num_classes)
        self.num_attributes = int(num_attributes) if "attr" in self.losses else 0
        self.masking = masking or MaskingSettings()
        self.image_ids = image_ids
        self.image_id_factor = image_id_factor
        self.mlm_trim = mlm_trim
        # IRRA's code: the matching losses see the MLM-masked caption (nothing is masked without mlm).
        self.irra_masked_matching = bool(irra_masked_matching)
        self.tal_tau, self.tal_margin = float(tal_tau), float(tal_margin)
        self.base_model = base_model
        self.embed_dim = base_model.config.embed_dim
        self.vocab_size = int(vocab_size if vocab_size is not None else base_model.config.vocab_size)
        # Fixed (not learned) logit scale, as IRRA: 1 / temperature.
        self.logit_scale = 1.0 / temperature
        if freeze_logit_scale and base_model.logit_scale is not None:
            # CLIP's learned scale goes unused here: frozen, it stays out of the optimizer (training does this).
            base_model.logit_scale.requires_grad_(False)
        # Under DDP with loss.gather, concatenates a tensor over all ranks (with gradients), so the
        # matching losses see the global batch; None = per-rank losses, as IRRA computes them.
        self.feature_gather = feature_gather
        width = self.embed_dim

        if "id" in self.losses:
            self.classifier = nn.Linear(width, self.num_classes)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.constant_(self.classifier.bias, 0.0)

        if "attr" in self.losses:  # one multi-label head over both modalities, initialised as the classifier
            self.attr_head = nn.Linear(width, self.num_attributes)
            nn.init.normal_(self.attr_head.weight, std=0.001)
            nn.init.constant_(self.attr_head.bias, 0.0)

        self.tse = bool(tse)
        if self.tse:  # RDE's heads, under RDE's names (its checkpoints and ours share the keys)
            if not {"tal", "sdm"} & set(self.losses):
                raise InputError("model.tse trains its heads with tal or sdm", hint="add tal (RDE) to loss.names")
            if self.irra_masked_matching and "mlm" in self.losses:
                raise InputError("model.tse cannot be combined with loss.irra_masked_matching",
                                 hint="set loss.irra_masked_matching=false")
            self.visul_emb_layer = ImageTokenSelection(width, tse_dim, tse_ratio)
            self.texual_emb_layer = TextTokenSelection(width, tse_dim, tse_ratio, base_model.config.context_length)

        if "mlm" in self.losses:
            if width % 64:
                raise InputError(
                    f"the cross-modal branch needs an embedding size divisible by 64, got {width}"
                )
            heads = width // 64
            self.cross_attn = CrossAttention(width, heads)
            self.cross_modal_transformer = Transformer(width=width, layers=cmt_depth, heads=heads)
            self.ln_pre_t = nn.LayerNorm(width)
            self.ln_pre_i = nn.LayerNorm(width)
            self.ln_post = nn.LayerNorm(width)
            self.mlm_head = nn.Sequential(
                OrderedDict(
                    [
                        ("dense", nn.Linear(width, width)),
                        ("gelu", QuickGELU()),
                        ("ln", nn.LayerNorm(width)),
                        ("fc", nn.Linear(width, self.vocab_size)),
                    ]
                )
            )
            self._init_cross_modal(width, cmt_depth)

    def _init_cross_modal(self, width: int, depth: int) -> None:
        attn_std = width**-0.5
        proj_std = width**-0.5 * (2 * depth) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.cross_modal_transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.cross_attn.in_proj_weight, std=attn_std)
        nn.init.normal_(self.cross_attn.out_proj.weight, std=proj_std)
        nn.init.normal_(self.mlm_head.dense.weight, std=fc_std)
        nn.init.normal_(self.mlm_head.fc.weight, std=proj_std)

    # ------------------------------------------------------------------------------ building

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        num_classes: int,
        clip: CLIP | None = None,
        *,
        freeze_logit_scale: bool = False,
        feature_gather: Callable[[Tensor], Tensor] | None = None,
        num_attributes: int = 0,
    ) -> IRRA:
        """The model the settings describe; ``clip`` defaults to ``settings.model.pretrained``
        (random init from ``settings.model.arch`` when that is null). The keywords are the
        constructor's: how training runs this model, which the settings do not say
        (``num_attributes``: labels of the attribute head, from the training data)."""
        if clip is None:
            clip = clip_from_settings(settings, num_classes)
        loss = settings.loss
        weights = {name: getattr(loss, f"{name}_weight") for name in LOSS_NAMES}
        return cls(
            clip,
            num_classes,
            losses=loss.enabled,
            loss_weights=weights,
            temperature=settings.model.temperature,
            cmt_depth=settings.model.cmt_depth,
            vocab_size=settings.model.vocab_size,
            masking=settings.masking,
            image_ids=loss.image_ids,
            image_id_factor=loss.image_id_factor,
            mlm_trim=loss.mlm_trim,
            irra_masked_matching=loss.irra_masked_matching,
            freeze_logit_scale=freeze_logit_scale,
            feature_gather=feature_gather,
            num_attributes=num_attributes,
            tal_tau=loss.tal_tau,
            tal_margin=loss.tal_margin,
            tse=settings.model.tse,
            tse_ratio=settings.model.tse_ratio,
            tse_dim=settings.model.tse_dim,
        )

    # ------------------------------------------------------------------------------ encoding

    def encode_image(self, images: Tensor) -> Tensor:
        """Global image features [B, D] (for retrieval)."""
        return self.base_model.encode_image(images)

    def encode_text(self, ids: Tensor) -> Tensor:
        """Global text features [B, D] (for retrieval)."""
        return self.base_model.encode_text(ids)

    def cross_former(self, text_tokens: Tensor, image_tokens: Tensor) -> Tensor:
        """Text tokens attend to image tokens, then the cross-modal blocks and ``ln_post``."""
        image = self.ln_pre_i(image_tokens)
        x = self.cross_attn(self.ln_pre_t(text_tokens), image, image)
        x, _ = self.cross_modal_transformer(x)
        return self.ln_post(x)

    # ------------------------------------------------------------------------------- forward

    def forward(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Losses and accuracies for one batch.

        ``batch``: ``images`` [B, 3, H, W], ``caption_ids`` [B, T] (SOT ... EOT, zero padded),
        ``pids`` [B] identity labels in [0, num_classes), optionally ``image_ids`` [B] and (needed
        by "attr") ``attributes`` [B, num_attributes] multi-hot labels. Returns
        ``<name>_loss`` for each enabled loss (weighted), ``loss`` (their sum), ``img_acc`` and
        ``txt_acc`` (with "id") and ``mlm_acc`` (with "mlm"); all tensors.
        """
        for key in ("images", "caption_ids", "pids"):
            if key not in batch:
                raise ValueError(f"batch has no {key!r} (needs images, caption_ids, pids)")
        images, ids, pids = batch["images"], batch["caption_ids"], batch["pids"].reshape(-1)
        if ids.dim() != 2 or ids.shape[0] != images.shape[0] or pids.shape[0] != ids.shape[0]:
            raise ValueError(
                f"batch shapes disagree: images {tuple(images.shape)}, caption_ids {tuple(ids.shape)}, "
                f"pids {tuple(pids.shape)}"
            )
        out: dict[str, Tensor] = {}
        use_mlm = "mlm" in self.losses
        agm = use_mlm and self.masking.strategy == "attention"

        if self.tse:
            image_tokens, class_row = self.base_model.encode_image_tokens_attention(images)
        else:
            image_tokens = self.base_model.encode_image_tokens(images)
        i_feats = image_tokens[:, 0].float()
        length = int(ids.argmax(dim=-1).max()) + 1
        short_ids = ids[:, :length]
        rows = torch.arange(ids.shape[0], device=ids.device)
        masked_matching = use_mlm and self.irra_masked_matching
        if masked_matching:
            eot_attention = None
            if agm:  # importance from the clean caption; its features are not used
                with torch.no_grad():
                    _, eot_attention = self.base_model.encode_text_tokens(
                        short_ids, attention_layers=self.masking.layers
                    )
            masked, labels = self._mask(ids, short_ids, eot_attention, generator)
            mlm_tokens, _ = self.base_model.encode_text_tokens(masked)
            t_feats = mlm_tokens[rows, masked.argmax(dim=-1)].float()  # IRRA: argmax of the masked ids
        elif self.tse:  # one pass gives the masking's rows and the last block's row for token selection
            layers = self.masking.layers if agm else 0
            text_tokens, eot_rows = self.base_model.encode_text_token_rows(short_ids, max(layers, 1))
            eot_attention = average_rows(eot_rows[-layers:]) if layers else None
            t_feats = text_tokens[rows, short_ids.argmax(dim=-1)].float()
        else:
            text_tokens, eot_attention = self.base_model.encode_text_tokens(
                short_ids, attention_layers=self.masking.layers if agm else 0
            )
            t_feats = text_tokens[rows, short_ids.argmax(dim=-1)].float()
        tse = None
        if self.tse:
            tse = (self.visul_emb_layer(image_tokens, class_row).float(),
                   self.texual_emb_layer(text_tokens, short_ids, eot_rows[-1]).float())

        g_i, g_t, g_pids = i_feats, t_feats, pids
        if self.feature_gather is not None:
            g_i, g_t, g_pids = self.feature_gather(i_feats), self.feature_gather(t_feats), self.feature_gather(pids)
        if "itc" in self.losses:
            out["itc_loss"] = itc_loss(g_i, g_t, self.logit_scale) * self.loss_weights["itc"]
        if "sdm" in self.losses:
            image_ids = self._image_ids(batch)
            if image_ids is not None and self.feature_gather is not None:
                image_ids = self.feature_gather(image_ids)
            loss = sdm_loss(g_i, g_t, g_pids, self.logit_scale, image_ids=image_ids, factor=self.image_id_factor)
            if tse is not None:  # RDE: the same loss on the token-selection embeddings, added
                tse_i, tse_t = (self.feature_gather(f) for f in tse) if self.feature_gather is not None else tse
                loss = loss + sdm_loss(tse_i, tse_t, g_pids, self.logit_scale, image_ids=image_ids,
                                       factor=self.image_id_factor)
            out["sdm_loss"] = loss * self.loss_weights["sdm"]
        if "cmpm" in self.losses:
            out["cmpm_loss"] = cmpm_loss(g_i, g_t, g_pids) * self.loss_weights["cmpm"]
        if "tal" in self.losses:
            loss = self._tal(i_feats, t_feats, pids, batch)
            if tse is not None:  # RDE's bge_loss + tse_loss
                loss = loss + self._tal(*tse, pids, batch)
            out["tal_loss"] = loss * self.loss_weights["tal"]
        if "id" in self.losses:
            self._check_pids(pids)
            image_logits = self.classifier(i_feats)
            text_logits = self.classifier(t_feats)
            out["id_loss"] = id_loss(image_logits, text_logits, pids) * self.loss_weights["id"]
            out["img_acc"] = (image_logits.argmax(dim=1) == pids).float().mean()
            out["txt_acc"] = (text_logits.argmax(dim=1) == pids).float().mean()
        if "attr" in self.losses:
            out["attr_loss"] = self._attributes(batch, i_feats, t_feats) * self.loss_weights["attr"]
        if use_mlm:
            if not masked_matching:
                masked, labels = self._mask(ids, short_ids, eot_attention, generator)
                mlm_tokens, _ = self.base_model.encode_text_tokens(masked)
            out.update(self._mlm(mlm_tokens, labels, image_tokens))

        out["loss"] = torch.stack([out[f"{name}_loss"].float() for name in self.losses]).sum()
        return out

    def _mask(
        self, ids: Tensor, short_ids: Tensor, eot_attention: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """Masked ids and MLM labels, padded back to the full caption length unless ``mlm_trim``."""
        masked, labels = mask_captions(short_ids, self.masking, eot_attention, generator)
        if not self.mlm_trim and short_ids.shape[1] < ids.shape[1]:
            pad = ids.shape[1] - short_ids.shape[1]
            masked = F.pad(masked, (0, pad))
            labels = F.pad(labels, (0, pad))
        return masked, labels

    def _mlm(self, mlm_tokens: Tensor, labels: Tensor, image_tokens: Tensor) -> dict[str, Tensor]:
        x = self.cross_former(mlm_tokens, image_tokens)
        chosen = labels != 0
        scores = self.mlm_head(x[chosen]).float()  # only masked positions: the head is per-position
        targets = labels[chosen]
        loss = mlm_loss(scores, targets) if targets.numel() else x.sum() * 0.0
        if targets.numel():
            accuracy = (scores.argmax(dim=1) == targets).float().mean()
        else:
            accuracy = torch.zeros((), device=x.device)
        return {"mlm_loss": loss * self.loss_weights["mlm"], "mlm_acc": accuracy}

    def retrieval_encoder(self) -> nn.Module:
        """What retrieval embeds with: the CLIP, or with model.tse the CLIP and the token-selection
        heads as one encoder of joint embeddings (``model.rde.TokenSelectionCLIP``)."""
        if not self.tse:
            return self.base_model
        encoder = TokenSelectionCLIP(self.base_model, self.visul_emb_layer, self.texual_emb_layer)
        encoder.training = self.base_model.training
        return encoder

    def _tal(self, i_feats: Tensor, t_feats: Tensor, pids: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        """RDE's triplet alignment loss over this batch (this process's pairs, as RDE), summed over the
        pairs; each pair weighted by ``batch["pair_weights"]`` when given (RDE's clean/noisy division)."""
        scores = F.normalize(t_feats.float(), dim=1) @ F.normalize(i_feats.float(), dim=1).t()
        per_pair = tal(scores, pids, tau=self.tal_tau, margin=self.tal_margin)
        weights = batch.get("pair_weights")
        if weights is not None:
            per_pair = per_pair * weights.reshape(-1).to(per_pair)
        return per_pair.sum()

    def _attributes(self, batch: Mapping[str, Tensor], i_feats: Tensor, t_feats: Tensor) -> Tensor:
        targets = batch.get("attributes")
        if targets is None:
            raise InputError("the attribute loss (attr) is on but the batch carries no attribute labels",
                             hint="drop attr from loss.names, or train on a dataset that records attributes")
        if targets.dim() != 2 or targets.shape != (i_feats.shape[0], self.num_attributes):
            raise ValueError(f"attributes must be [{i_feats.shape[0]}, {self.num_attributes}], "
                             f"got {tuple(targets.shape)}")
        return attr_loss(self.attr_head(i_feats), self.attr_head(t_feats), targets)

    def _image_ids(self, batch: Mapping[str, Tensor]) -> Tensor | None:
        if not self.image_ids:
            return None
        if "image_ids" not in batch:
            raise InputError(
                "loss.image_ids is on but the batch carries no image ids",
                hint="turn it off (--set loss.image_ids=false) or use a dataset that provides image ids",
            )
        return batch["image_ids"].reshape(-1)

    def _check_pids(self, pids: Tensor) -> None:
        low, high = int(pids.min()), int(pids.max())
        if low < 0 or high >= self.num_classes:
            bad = low if low < 0 else high
            raise InputError(
                f"identity label {bad} is outside the classifier's {self.num_classes} classes",
                hint="num_classes must be the number of training identities, labels 0..num_classes-1",
            )


def build_irra(
    settings: Settings,
    num_classes: int,
    clip: CLIP | None = None,
    *,
    freeze_logit_scale: bool = False,
    feature_gather: Callable[[Tensor], Tensor] | None = None,
    num_attributes: int = 0,
) -> IRRA:
    """``IRRA.from_settings``: the model, its CLIP from ``settings.model`` unless one is given."""
    return IRRA.from_settings(settings, num_classes, clip, freeze_logit_scale=freeze_logit_scale,
                              feature_gather=feature_gather, num_attributes=num_attributes)
