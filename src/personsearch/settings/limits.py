"""Every bound a setting or a settings document is held to, in one place.

Setting ranges are wide enough for every real CLIP (ViT-bigG is 1664 wide, 48 layers deep) and
narrow enough that a slip of the keyboard is refused before a model is built rather than crashing
(or filling the memory) inside training. Document bounds keep a hostile YAML file or override from
costing more than its size.
"""

from __future__ import annotations

# Ranges of the settings themselves.
INT64_MAX = 2**63 - 1
SEED_MAX = 2**32 - 1  # numpy's legacy seeding and PYTHONHASHSEED take 32-bit seeds
MAX_WIDTH = 8192
MAX_LAYERS = 256
MAX_HEADS = 1024
MAX_IMAGE_SIDE = 8192
MAX_PATCH = 1024
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20
MAX_WORKERS = 256
MAX_TEXT_CHARS = 4096
#: The CLIP tokenizer's ids (personsearch.text): 49,405 BPE symbols, then <|mask|>=49405,
#: <|startoftext|>=49406, <|endoftext|>=49407; the token table and the MLM head need them all.
TOKENIZER_VOCAB = 49408
#: Captions are prepared as 77 tokens (SOT + BPE + EOT), the context of every CLIP checkpoint.
MAX_TEXT_LENGTH = 77
#: The cross-modal branch uses IRRA's heads of 64 channels (heads = embedding size / 64).
CROSS_HEAD_WIDTH = 64

# Bounds of a settings document (a YAML file, an environment variable, a --set value).
#: How deep any value may nest (settings are at most three sections deep, values at most a list).
MAX_DEPTH = 32
MAX_CONFIG_BYTES = 1 << 20
MAX_ALIASES = 100
MAX_NUMBER_CHARS = 100  # a number in YAML longer than this is no setting (64 binary digits + sign + 0b)
