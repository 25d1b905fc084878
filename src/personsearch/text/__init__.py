"""Text side: the CLIP tokenizer (and its special ids) and the masking strategies beside it."""

from personsearch.text.tokenizer import (
    EOT_TOKEN_ID,
    MASK_TOKEN_ID,
    PAD_TOKEN_ID,
    SOT_TOKEN_ID,
    ClipTokenizer,
    clean_text,
    default_tokenizer,
    text_words,
    tokenize,
)

__all__ = [
    "EOT_TOKEN_ID",
    "MASK_TOKEN_ID",
    "PAD_TOKEN_ID",
    "SOT_TOKEN_ID",
    "ClipTokenizer",
    "clean_text",
    "default_tokenizer",
    "text_words",
    "tokenize",
]
