"""CLIP ViT image encoder and causal text transformer with OpenAI's parameter names.

The state dict matches OpenAI's (and IRRA's ``base_model``) key for key, so every public CLIP
checkpoint loads without renaming. Differences from OpenAI's module are in speed only: attention
runs through ``scaled_dot_product_attention`` on the fused ``in_proj`` weights, tokens are laid out
batch-first, the image may be any (H, W) with any stride up to the patch size, and the text encoder
can report the EOT query's attention row (the importance signal of attention-guided masking) from
the same forward that produces the features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from personsearch.errors import InputError
from personsearch.model.transformer import Attention, QuickGELU, ResidualAttentionBlock, Transformer, average_rows

__all__ = ["CLIP", "Attention", "CLIPConfig", "ConvStem", "QuickGELU", "ResidualAttentionBlock", "TOWERS",
           "Transformer", "build_clip", "check_conv_stem", "config_from_state_dict", "check_towers", "patch_grid"]

#: The two encoders of a CLIP, by the name ``towers`` arguments use.
TOWERS = ("image", "text")


@dataclass(frozen=True)
class CLIPConfig:
    """Architecture of a CLIP ViT, as read from a state dict or chosen for random init.

    ``image_resolution`` is the square input size the checkpoint's position table was trained for
    (224 for ViT-B/16); it is ``None`` when that table is not square (a checkpoint saved at a
    person-shaped grid such as 24x8), in which case it is used as stored.
    """

    embed_dim: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    patch_size: int
    image_resolution: int | None
    text_width: int
    text_layers: int
    text_heads: int
    context_length: int = 77
    vocab_size: int = 49408
    stem: str = "patch"  # "patch": one patch projection (OpenAI's); "conv": ``ConvStem``

    @property
    def pretrained_grid(self) -> tuple[int, int] | None:
        if self.image_resolution is None:
            return None
        side = self.image_resolution // self.patch_size
        return (side, side)


#: The image tower's first layer: OpenAI's patch projection (or a ``ConvStem``: visual.conv1.N.*).
_STEM_KEYS = ("visual.conv1.weight",)
_REQUIRED_KEYS = ("visual.class_embedding", "visual.positional_embedding",
                  "visual.ln_post.weight", "visual.proj", "token_embedding.weight", "positional_embedding",
                  "ln_final.weight", "text_projection")


def _count_layers(state_dict: dict[str, Tensor], prefix: str) -> int:
    indices = {
        int(key[len(prefix) :].split(".", 1)[0])
        for key in state_dict
        if key.startswith(prefix) and key[len(prefix) :].split(".", 1)[0].isdigit()
    }
    return max(indices) + 1 if indices else 0


def config_from_state_dict(state_dict: dict[str, Tensor]) -> CLIPConfig:
    """Read the architecture from an OpenAI-named CLIP state dict (B/32, B/16, L/14, L/14@336, ...)."""
    if (
        any(key.startswith("visual.layer1.") for key in state_dict)
        or "visual.attnpool.c_proj.weight" in state_dict
    ):
        raise InputError(
            "ResNet CLIP is not supported: this checkpoint has a ResNet image encoder (visual.layer1...)",
            hint="use a ViT CLIP such as ViT-B/16",
        )
    missing = [key for key in _REQUIRED_KEYS if key not in state_dict]
    if not any(key.startswith("visual.conv1.") for key in state_dict):
        missing.insert(0, _STEM_KEYS[0])
    if missing:
        raise InputError(
            f"not a CLIP ViT checkpoint: missing {', '.join(missing)}",
            hint="expected OpenAI CLIP parameter names (visual.*, transformer.*, token_embedding, ...)",
        )
    if "visual.conv1.weight" in state_dict:
        stem = "patch"
        vision_width, _, patch_size, _ = state_dict["visual.conv1.weight"].shape
    else:
        stem, convs = "conv", (_count_layers(state_dict, "visual.conv1.") + 1) // 2
        weights = [state_dict.get(f"visual.conv1.{ConvStem.index(i)}.weight") for i in range(convs)]
        channels = [3] + [w.shape[0] if w is not None and w.ndim == 4 else -1 for w in weights]
        if any(w is None or w.ndim != 4 or w.shape[1] != channels[i] or tuple(w.shape[2:]) != (3, 3)
               for i, w in enumerate(weights)):
            raise InputError("not a CLIP ViT checkpoint: its convolutional stem (visual.conv1.N.weight) is incomplete "
                             "or its layers do not chain")
        vision_width, patch_size = channels[-1], 2**convs
    vision_layers = _count_layers(state_dict, "visual.transformer.resblocks.")
    text_layers = _count_layers(state_dict, "transformer.resblocks.")
    if vision_layers == 0 or text_layers == 0:
        which = "visual.transformer.resblocks.0.*" if vision_layers == 0 else "transformer.resblocks.0.*"
        raise InputError(f"not a CLIP ViT checkpoint: missing {which}")
    positions = state_dict["visual.positional_embedding"].shape[0] - 1
    side = math.isqrt(positions)
    text_width = state_dict["ln_final.weight"].shape[0]
    return CLIPConfig(
        embed_dim=state_dict["text_projection"].shape[1],
        vision_width=vision_width,
        vision_layers=vision_layers,
        vision_heads=max(1, vision_width // 64),
        patch_size=patch_size,
        image_resolution=side * patch_size if side * side == positions else None,
        text_width=text_width,
        text_layers=text_layers,
        text_heads=max(1, text_width // 64),
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        stem=stem,
    )


def patch_grid(image_size: tuple[int, int], patch_size: int, stride: int) -> tuple[int, int]:
    """Rows and columns of patches; every pixel must be covered, as IRRA's stride arithmetic assumes."""
    height, width = (int(v) for v in image_size)
    if stride < 1 or stride > patch_size:
        raise InputError(
            f"patch stride {stride} is not usable with patch size {patch_size}",
            hint=f"choose a stride between 1 and {patch_size}",
        )
    for name, size in (("height", height), ("width", width)):
        if size < patch_size or (size - patch_size) % stride:
            lower = max(patch_size, patch_size + (max(size - patch_size, 0) // stride) * stride)
            raise InputError(
                f"image {name} {size} cannot be covered by {patch_size}-pixel patches at stride {stride}",
                hint=f"use a {name} of the form {patch_size} + k*{stride}, e.g. {lower} or {lower + stride}",
            )
    return ((height - patch_size) // stride + 1, (width - patch_size) // stride + 1)


def check_towers(towers: Any) -> tuple[str, ...]:
    """``towers`` as a tuple in ``TOWERS`` order: both encoders, or the text encoder alone."""
    names = (towers,) if isinstance(towers, str) else tuple(towers) if isinstance(towers, (list, tuple)) else ()
    if set(names) not in ({"image", "text"}, {"text"}) or not all(isinstance(n, str) for n in names):
        raise InputError(f"towers must be ('image', 'text') or ('text',), not {towers!r:.80}",
                         hint="load both encoders, or only the text encoder for text queries")
    return tuple(name for name in TOWERS if name in names)


class ConvStem(nn.Sequential):
    """3x3 convolutions of stride 2 in place of the patch projection, one per halving of the patch
    size (8 -> three), channels doubling up to the tower's width, GELU between them. Its output is
    the same patch grid. Early convolutions give a tower trained from scratch on a few thousand
    images the locality prior a ViT lacks: it learns garment shapes (a dress, a coat, bare legs)
    that carry over to unseen people, where patches learn mostly colours
    (benchmarks/probe_attributes.py)."""

    def __init__(self, width: int, patch_size: int) -> None:
        steps = check_conv_stem(patch_size)
        channels = [3] + [max(min(16, width), width >> (steps - 1 - i)) for i in range(steps)]
        layers: list[nn.Module] = []
        for i in range(steps):
            if i:
                layers.append(nn.GELU())
            layers.append(nn.Conv2d(channels[i], channels[i + 1], kernel_size=3, stride=2, padding=1))
        super().__init__(*layers)

    @staticmethod
    def index(conv: int) -> int:
        """The position in the sequence of the ``conv``-th convolution (GELUs sit between)."""
        return 2 * conv

    @property
    def weight(self) -> Tensor:
        """The first convolution's weight: what callers read the tower's dtype and device from."""
        first = self[0]
        assert isinstance(first, nn.Conv2d)
        return first.weight


def check_conv_stem(patch_size: int, stride: int | None = None) -> int:
    """The number of stride-2 convolutions a conv stem needs for ``patch_size``; an InputError
    unless it is a power of two of at least 2 and (``stride`` given) the patches do not overlap."""
    if patch_size < 2 or patch_size & (patch_size - 1):
        raise InputError(f"a conv stem needs a patch size that is a power of two (2, 4, 8, 16, ...), not {patch_size}",
                         hint="set model.arch.patch_size to 8 or 16, or model.arch.stem to patch")
    if stride is not None and stride != patch_size:
        raise InputError(f"a conv stem makes non-overlapping patches: model.stride {stride} must equal the patch "
                         f"size {patch_size}", hint=f"set model.stride={patch_size}")
    return patch_size.bit_length() - 1


class VisionTransformer(nn.Module):
    def __init__(self, config: CLIPConfig, grid: tuple[int, int], stride: int) -> None:
        super().__init__()
        width = config.vision_width
        self.grid = grid
        self.stride = stride
        self.conv1: nn.Module
        if config.stem == "conv":
            check_conv_stem(config.patch_size, stride)
            self.conv1 = ConvStem(width, config.patch_size)
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=stride, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid[0] * grid[1] + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, config.vision_layers, config.vision_heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, config.embed_dim))

    def tokens(self, images: Tensor, class_only: bool = False) -> Tensor:
        """Every token after the last block, before ``ln_post``: [B, 1 + rows*cols, width]
        (with ``class_only``: the class token [B, width], computed more cheaply)."""
        x = self._embed(images)
        if class_only:
            return self.transformer.forward_one(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        x, _ = self.transformer(x)
        return x

    def tokens_and_class_attention(self, images: Tensor, attention_layers: int = 1) -> tuple[Tensor, Tensor]:
        """Every token (as ``tokens``) and the class token's attention row [B, 1 + rows*cols]:
        averaged over heads and the last ``attention_layers`` blocks, detached."""
        x = self._embed(images)
        query = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        x, row = self.transformer(x, query_index=query, attention_layers=max(1, attention_layers))
        assert row is not None
        return x, row

    def _embed(self, images: Tensor) -> Tensor:
        """Patch, class and position embeddings after ``ln_pre``: the first block's input."""
        x = self.conv1(images.to(self.conv1.weight.dtype))  # type: ignore[union-attr]
        if tuple(x.shape[-2:]) != self.grid:
            raise InputError(
                f"images of size {tuple(images.shape[-2:])} give a {tuple(x.shape[-2:])} patch grid; "
                f"this model expects {self.grid}",
                hint="resize images to the model's image size",
            )
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)


class CLIP(nn.Module):
    """CLIP ViT for person-shaped images; parameter names are OpenAI's exactly. With ``towers=("text",)``
    the image encoder is not built (``visual`` is None; ``encode_image`` refuses): what a text query needs."""

    def __init__(self, config: CLIPConfig, image_size: tuple[int, int] = (384, 128), stride: int = 16,
                 towers: Any = TOWERS) -> None:
        super().__init__()
        self.config = config
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.stride = int(stride)
        self.grid = patch_grid(self.image_size, config.patch_size, self.stride)
        self.towers = check_towers(towers)
        self.visual = VisionTransformer(config, self.grid, self.stride) if "image" in self.towers else None
        self.transformer = Transformer(config.text_width, config.text_layers, config.text_heads)
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.text_width))
        self.ln_final = nn.LayerNorm(config.text_width)
        self.text_projection = nn.Parameter(torch.empty(config.text_width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """OpenAI CLIP's initialisation of the text tower (the visual tower initialises itself)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        width, layers = self.transformer.width, self.transformer.layers
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        attn_std = width**-0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    @property
    def dtype(self) -> torch.dtype:
        return (self.visual.conv1.weight if self.visual is not None else self.token_embedding.weight).dtype  # type: ignore[union-attr]

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    # ---------------------------------------------------------------------------------- image

    def encode_image(self, images: Tensor) -> Tensor:
        """Global image features [B, D]: the class token after ``ln_post``, projected."""
        visual = self._image_tower()
        x = visual.tokens(images, class_only=True)
        return visual.ln_post(x) @ visual.proj.to(x.dtype)

    def encode_image_tokens(self, images: Tensor) -> Tensor:
        """Every image token [B, 1 + N, D] after ``ln_post``, projected; index 0 is the global feature."""
        visual = self._image_tower()
        x = visual.tokens(images)
        return visual.ln_post(x) @ visual.proj.to(x.dtype)

    def encode_image_tokens_attention(self, images: Tensor, attention_layers: int = 1) -> tuple[Tensor, Tensor]:
        """``encode_image_tokens`` and the class token's attention row [B, 1 + N] of the last
        ``attention_layers`` blocks (head-averaged, detached): what token selection reads."""
        visual = self._image_tower()
        x, row = visual.tokens_and_class_attention(images, attention_layers)
        return visual.ln_post(x) @ visual.proj.to(x.dtype), row

    def _image_tower(self) -> VisionTransformer:
        if self.visual is None:
            raise InputError("this model was loaded for text queries only: it has no image encoder",
                             hint='load it with both towers (the default), not towers=("text",)')
        return self.visual

    # ----------------------------------------------------------------------------------- text

    def _text_embeddings(self, ids: Tensor, trim: bool) -> tuple[Tensor, Tensor]:
        """Token + position embeddings [B, T, C] and EOT positions [B]."""
        if ids.dim() != 2:
            raise InputError(f"token ids must have shape [batch, length], got {tuple(ids.shape)}")
        if ids.shape[1] > self.config.context_length:
            raise InputError(
                f"captions of {ids.shape[1]} tokens exceed the context of {self.config.context_length}",
                hint="tokenize with the model's context length",
            )
        eot = ids.argmax(dim=-1)
        if trim and ids.shape[0] > 0:
            ids = ids[:, : int(eot.max()) + 1]
        return self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]], eot

    def _text_tokens(
        self, ids: Tensor, attention_layers: int, trim: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        x, eot, rows = self._text_token_rows(ids, attention_layers, trim)
        return x, eot, average_rows(rows)

    def _text_token_rows(self, ids: Tensor, attention_layers: int, trim: bool) -> tuple[Tensor, Tensor, list[Tensor]]:
        x, eot = self._text_embeddings(ids, trim)
        x, rows = self.transformer.forward_rows(
            x, causal=True, query_index=eot if attention_layers > 0 else None, attention_layers=attention_layers
        )
        return x, eot, rows

    def encode_text_token_rows(
        self, ids: Tensor, attention_layers: int, trim: bool = False
    ) -> tuple[Tensor, list[Tensor]]:
        """``encode_text_tokens`` with the EOT attention row of each of the last ``attention_layers``
        blocks (in order) instead of their average: one pass serves both masking and token selection."""
        x, _, rows = self._text_token_rows(ids, attention_layers, trim)
        return self.ln_final(x) @ self.text_projection.to(x.dtype), rows

    def encode_text(self, ids: Tensor) -> Tensor:
        """Global text features [B, D]: the EOT token (argmax of ids) after ``ln_final``, projected.

        The encoder is causal, so the batch is cut to its longest caption first; the result is the
        same as running all ``context_length`` positions.
        """
        x, eot = self._text_embeddings(ids, trim=True)
        x = self.transformer.forward_one(x, eot, causal=True)
        return self.ln_final(x) @ self.text_projection.to(x.dtype)

    def encode_text_tokens(
        self, ids: Tensor, attention_layers: int = 0, trim: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Every text token [B, T, D] after ``ln_final``, projected, and the EOT attention row.

        With ``attention_layers`` > 0 the second value is the attention weight from the EOT query
        to every key position [B, T], averaged over heads and the last ``attention_layers`` layers,
        detached (zero after EOT). ``trim`` cuts T to the longest caption (max EOT index + 1);
        positions up to each caption's EOT are identical either way. The global text feature is
        ``tokens[arange(B), ids.argmax(-1)]``.
        """
        x, _, row = self._text_tokens(ids, attention_layers=attention_layers, trim=trim)
        return self.ln_final(x) @ self.text_projection.to(x.dtype), row

    def forward(self, images: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Global image and text features."""
        return self.encode_image(images), self.encode_text(ids)


def _arch_value(arch: Any, name: str) -> int:
    value = arch[name] if isinstance(arch, dict) else getattr(arch, name)
    return int(value)


def build_clip(
    arch: Any,
    image_size: tuple[int, int] = (384, 128),
    stride: int = 16,
    context_length: int = 77,
    vocab_size: int = 49408,
) -> CLIP:
    """A new, randomly initialised CLIP from an architecture: ``settings.model.arch`` or a dict of it."""
    patch = _arch_value(arch, "patch_size")
    config = CLIPConfig(
        embed_dim=_arch_value(arch, "embed_dim"),
        vision_width=_arch_value(arch, "vision_width"),
        vision_layers=_arch_value(arch, "vision_layers"),
        vision_heads=_arch_value(arch, "vision_heads"),
        patch_size=patch,
        image_resolution=None,
        text_width=_arch_value(arch, "text_width"),
        text_layers=_arch_value(arch, "text_layers"),
        text_heads=_arch_value(arch, "text_heads"),
        context_length=int(context_length),
        vocab_size=int(vocab_size),
        stem=str(arch.get("stem", "patch") if isinstance(arch, dict) else getattr(arch, "stem", "patch")),
    )
    return CLIP(config, image_size=image_size, stride=stride)
