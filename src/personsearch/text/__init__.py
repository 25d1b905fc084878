"""Text side: the CLIP tokenizer (and the masking strategies beside it)."""

from personsearch.text.tokenizer import ClipTokenizer, clean_text, default_tokenizer, tokenize

__all__ = ["ClipTokenizer", "clean_text", "default_tokenizer", "tokenize"]
