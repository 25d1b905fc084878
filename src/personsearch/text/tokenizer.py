"""CLIP byte-level BPE in IRRA's vocabulary layout.

IRRA's checkpoints expect 49,408 ids: 256 byte symbols, their 256 ``</w>`` forms, the first
48,893 merged symbols, then ``<|mask|>`` = 49405, ``<|startoftext|>`` = 49406 and
``<|endoftext|>`` = 49407. IRRA drops the last merged symbol (``jekyll</w>``) from the vocabulary
but keeps its merge, so the word "jekyll" raises KeyError there; here that merge is left out of
the ranks, so the word splits into ``jeky`` + ``ll</w>`` and every other word encodes as in IRRA.

Encoding caches the ids of each pre-tokenised word, and takes a fast path for printable ASCII
without ``&``: ftfy leaves such text unchanged apart from line breaks (which the whitespace
collapse removes anyway), and an ASCII word pattern finds the same words. The tests compare both
paths with a plain implementation. Loading decompresses only the part of the vocabulary file the
merges fill, and ftfy is imported only for text that needs it (start-up of a one-shot query).
"""

from __future__ import annotations

import functools
import hashlib
import html
import re
import zlib
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import regex

from personsearch.errors import InputError

if TYPE_CHECKING:
    import torch

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
NUM_MERGES = 49152 - 256 - 2  # file lines 2..48,895
MASK_TOKEN = "<|mask|>"
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
#: The special ids follow the BPE symbols (bytes, their ``</w>`` forms, all merges but the last):
#: every other module takes them from here.
MASK_TOKEN_ID = 2 * 256 + NUM_MERGES - 1  # 49405
SOT_TOKEN_ID = MASK_TOKEN_ID + 1  # 49406
EOT_TOKEN_ID = MASK_TOKEN_ID + 2  # 49407
#: Rows are zero-padded after EOT.
PAD_TOKEN_ID = 0
LAYOUT = "irra-v1: bytes, bytes</w>, merges[:-1], mask, sot, eot; last merge dropped from ranks"

_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|mask\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
# The same word pattern for lowercased printable ASCII, where letters are [a-z] and digits [0-9];
# the stdlib engine runs it about twice as fast.
_ASCII_WORD_PATTERN = re.compile(
    r"<\|startoftext\|>|<\|mask\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+"
)
_WHITESPACE = regex.compile(r"\s+")
_PLAIN_ASCII = regex.compile(r"[\t\n\r\x20-\x25\x27-\x7e]*")
_CACHE_LIMIT = 500_000


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from bytes to printable characters (no whitespace or controls)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


def clean_text(text: str) -> str:
    """CLIP's cleaning: ftfy, html unescape twice, collapse whitespace, lowercase."""
    if _PLAIN_ASCII.fullmatch(text) is None:
        import ftfy  # only here: plain ASCII, most captions and queries, never needs it

        text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text))
    return _WHITESPACE.sub(" ", text).strip().lower()


def text_words(text: str) -> list[str]:
    """The words the tokenizer sees in ``text`` (CLIP cleaning, lowercase): letters only, so
    punctuation and digits are left out. A run records those of its training captions."""
    if _PLAIN_ASCII.fullmatch(text) is not None:
        words = _ASCII_WORD_PATTERN.findall(" ".join(text.split()).lower())
    else:
        words = _WORD_PATTERN.findall(clean_text(text))
    return [word for word in words if word.isalpha()]


def _first_lines(data: bytes, count: int) -> list[str]:
    """The first ``count`` lines of gzipped UTF-8 text, decompressing only as far as they reach (the
    vocabulary file holds 262,146 lines; the tokenizer reads its first 48,895)."""
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)  # the gzip container
    chunks: list[bytes] = []
    newlines = position = 0
    while newlines < count and position < len(data):
        piece = inflater.decompress(data[position : position + _INFLATE_STEP])
        position += _INFLATE_STEP
        chunks.append(piece)
        newlines += piece.count(b"\n")
        if inflater.eof:
            break
    if newlines < count and not inflater.eof:
        raise EOFError("the compressed data ends early")
    raw = b"".join(chunks)
    if not inflater.eof:  # stopped inside the text: keep whole lines (a newline ends any UTF-8 character)
        raw = raw[: raw.rfind(b"\n") + 1]
    return raw.decode("utf-8").split("\n", count)[:count]


_INFLATE_STEP = 1 << 16


def _pairs(word: Sequence[str]) -> set[tuple[str, str]]:
    return {(word[i], word[i + 1]) for i in range(len(word) - 1)}


class ClipTokenizer:
    """Text to CLIP BPE ids and back; ``encode`` gives BPE ids only (no SOT/EOT)."""

    def __init__(self, vocab_path: str | Path | None = None) -> None:
        if vocab_path is None:
            data = resources.files("personsearch.text").joinpath(VOCAB_FILE).read_bytes()
        else:
            path = Path(vocab_path)
            if not path.is_file():
                raise InputError(f"BPE vocabulary file not found: {path}")
            data = path.read_bytes()
        try:
            lines = _first_lines(data, NUM_MERGES + 1)
        except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
            raise InputError(f"{vocab_path or VOCAB_FILE} is not a gzipped BPE merges file ({exc})") from None
        # map() over builtins: the same values as comprehensions, built in a third of the time
        merges: list[tuple[str, ...]] = list(map(tuple, map(str.split, lines[1 : NUM_MERGES + 1])))
        if len(merges) != NUM_MERGES or set(map(len, merges)) != {2}:
            raise InputError(f"{vocab_path or VOCAB_FILE} does not hold {NUM_MERGES} BPE merges")
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {char: byte for byte, char in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [symbol + "</w>" for symbol in symbols]
        vocab += map("".join, merges[:-1])
        vocab += [MASK_TOKEN, SOT_TOKEN, EOT_TOKEN]
        self.encoder: dict[str, int] = dict(zip(vocab, range(len(vocab)), strict=True))
        self.decoder: dict[int, str] = dict(enumerate(vocab))
        # The last merge produces the dropped symbol: leaving it out keeps every id valid.
        self.bpe_ranks: dict[tuple[str, str], int] = {merge: rank for rank, merge in enumerate(merges[:-1])}
        self.mask_token_id = self.encoder[MASK_TOKEN]
        self.sot_token_id = self.encoder[SOT_TOKEN]
        self.eot_token_id = self.encoder[EOT_TOKEN]
        self.vocab_size = len(vocab)
        self.special_ids = frozenset((self.mask_token_id, self.sot_token_id, self.eot_token_id))
        self._word_ids: dict[str, tuple[int, ...]] = {
            SOT_TOKEN: (self.sot_token_id,),
            MASK_TOKEN: (self.mask_token_id,),
            EOT_TOKEN: (self.eot_token_id,),
        }
        digest = hashlib.sha256(LAYOUT.encode())
        digest.update("\n".join(vocab).encode())
        self.fingerprint = digest.hexdigest()[:16]

    # -- BPE ------------------------------------------------------------------------------

    def bpe(self, word: str) -> list[str]:
        """Merge the byte symbols of one pre-tokenised word, lowest rank first."""
        parts: tuple[str, ...] = tuple(word[:-1]) + (word[-1] + "</w>",)
        pairs = _pairs(parts)
        if not pairs:
            return [word + "</w>"]
        ranks = self.bpe_ranks
        while True:
            bigram = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
            if bigram not in ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(parts):
                try:
                    j = parts.index(first, i)
                except ValueError:
                    merged.extend(parts[i:])
                    break
                merged.extend(parts[i:j])
                i = j
                if i < len(parts) - 1 and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = tuple(merged)
            if len(parts) == 1:
                break
            pairs = _pairs(parts)
        return list(parts)

    def _ids_of_word(self, word: str) -> tuple[int, ...]:
        ids = self._word_ids.get(word)
        if ids is None:
            symbols = "".join(self.byte_encoder[byte] for byte in word.encode("utf-8"))
            ids = tuple(self.encoder[piece] for piece in self.bpe(symbols))
            if len(self._word_ids) < _CACHE_LIMIT:
                self._word_ids[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` after CLIP cleaning (no SOT/EOT; empty text gives [])."""
        if _PLAIN_ASCII.fullmatch(text) is not None:
            words = _ASCII_WORD_PATTERN.findall(" ".join(text.split()).lower())
        else:
            words = _WORD_PATTERN.findall(clean_text(text))
        ids: list[int] = []
        for word in words:
            ids.extend(self._ids_of_word(word))
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``. With ``skip_special_tokens`` SOT is dropped and decoding stops at the
        first EOT (padding follows it); ``<|mask|>`` is always shown as such."""
        pieces: list[str] = []
        pending: list[str] = []

        def flush() -> None:
            if pending:
                raw = bytearray(self.byte_decoder[char] for char in "".join(pending))
                pieces.append(raw.decode("utf-8", errors="replace").replace("</w>", " "))
                pending.clear()

        for token in ids:
            token = int(token)
            if skip_special_tokens and token == self.sot_token_id:
                continue
            if skip_special_tokens and token == self.eot_token_id:
                break
            if token in self.special_ids:
                flush()
                pieces.append(self.decoder[token] + " ")
                continue
            symbol = self.decoder.get(token)
            if symbol is None:
                raise ValueError(f"token id {token} is outside the vocabulary (0..{self.vocab_size - 1})")
            pending.append(symbol)
        flush()
        return _WHITESPACE.sub(" ", "".join(pieces)).strip()

    # -- fixed-length rows ------------------------------------------------------------------

    def token_matrix(
        self,
        texts: str | Sequence[str],
        context_length: int = 77,
        truncate: bool = True,
        dtype: type = np.int64,
        full_lengths: list[int] | None = None,
    ) -> np.ndarray:
        """``[N, context_length]`` rows ``SOT + bpe + EOT``, zero-padded; over-long rows are cut and
        end with EOT, or raise InputError naming the caption when ``truncate`` is False.
        ``full_lengths``, if given, receives each row's length before cutting."""
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise InputError(f"context length {context_length} is too short: SOT and EOT need 2 positions")
        rows = np.zeros((len(texts), context_length), dtype=dtype)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if full_lengths is not None:
                full_lengths.append(len(ids))
            if len(ids) > context_length:
                if not truncate:
                    shown = text if len(text) <= 80 else text[:77] + "..."
                    raise InputError(
                        f"caption {row} is {len(ids)} tokens long, over the context length {context_length}: "
                        f"{shown!r}",
                        hint="shorten it or tokenize with truncate=True",
                    )
                ids = ids[:context_length]
                ids[-1] = self.eot_token_id
            rows[row, : len(ids)] = ids
        return rows

    def tokenize(
        self, texts: str | Sequence[str], context_length: int = 77, truncate: bool = True
    ) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.token_matrix(texts, context_length, truncate, dtype=np.int64))


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> ClipTokenizer:
    """The shipped vocabulary, loaded once per process."""
    return ClipTokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = 77, truncate: bool = True) -> torch.Tensor:
    """``LongTensor[N, context_length]`` of CLIP ids for one caption or a list of captions."""
    return default_tokenizer().tokenize(texts, context_length, truncate)
