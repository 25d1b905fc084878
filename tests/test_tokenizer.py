"""The CLIP tokenizer against a plain uncached reference of IRRA's algorithm, plus the layout facts."""

from __future__ import annotations

import gzip
import hashlib
import html
import random
from importlib import resources

import ftfy
import pytest
import regex
import torch

from personsearch.errors import InputError
from personsearch.text import ClipTokenizer, default_tokenizer, tokenize
from personsearch.text.tokenizer import EOT_TOKEN_ID, MASK_TOKEN_ID, SOT_TOKEN_ID, VOCAB_FILE

VOCAB_BYTES = resources.files("personsearch.text").joinpath(VOCAB_FILE).read_bytes()


class PlainBPE:
    """IRRA's SimpleTokenizer written out without any cache or fast path (last merge excluded)."""

    def __init__(self) -> None:
        lines = gzip.decompress(VOCAB_BYTES).decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(line.split()) for line in lines]
        printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
        chars = {byte: chr(byte) for byte in printable}
        extra = 0
        for byte in range(256):
            if byte not in chars:
                chars[byte] = chr(256 + extra)
                extra += 1
        self.byte_map = chars
        base = [chars[b] for b in printable] + [chars[b] for b in range(256) if b not in printable]
        vocab = base + [c + "</w>" for c in base] + ["".join(m) for m in merges][:-1]
        vocab += ["<|mask|>", "<|startoftext|>", "<|endoftext|>"]
        self.ids = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges[:-1])}
        self.pattern = regex.compile(
            r"""<\|startoftext\|>|<\|mask\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def bpe(self, token: str) -> list[str]:
        if token in ("<|startoftext|>", "<|mask|>", "<|endoftext|>"):
            return [token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = [(word[i], word[i + 1]) for i in range(len(word) - 1)]
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
        text = regex.sub(r"\s+", " ", text).strip().lower()
        out = []
        for token in self.pattern.findall(text):
            symbols = "".join(self.byte_map[b] for b in token.encode("utf-8"))
            out.extend(self.ids[piece] for piece in self.bpe(symbols))
        return out


@pytest.fixture(scope="module")
def plain() -> PlainBPE:
    return PlainBPE()


def test_vocabulary_file_is_the_published_one():
    assert (
        hashlib.sha256(VOCAB_BYTES).hexdigest()
        == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    )


def test_layout_and_special_ids():
    tok = default_tokenizer()
    assert (tok.mask_token_id, tok.sot_token_id, tok.eot_token_id, tok.vocab_size) == (
        49405,
        49406,
        49407,
        49408,
    )
    assert (MASK_TOKEN_ID, SOT_TOKEN_ID, EOT_TOKEN_ID) == (tok.mask_token_id, tok.sot_token_id, tok.eot_token_id)
    assert tok.decoder[0] == "!" and tok.decoder[256] == "!</w>"
    assert tok.decoder[512] == "in"  # first merge "i n"
    assert "jekyll</w>" not in tok.encoder
    assert default_tokenizer() is tok
    assert len(tok.fingerprint) == 16 and ClipTokenizer().fingerprint == tok.fingerprint


def test_known_clip_ids():
    # Ids of the standard CLIP tokenizer, which IRRA's layout keeps for every word but "jekyll".
    assert default_tokenizer().encode("a photo of a cat") == [320, 1125, 539, 320, 2368]


CAPTIONS = [
    "A woman in a red coat carrying a black bag.",
    "The man wears a grey T-shirt, blue jeans and white sneakers; he's walking fast!",
    "She's got long   blonde\thair\nand a \u201cstriped\u201d scarf.",
    "Caf\u00e9 na\u00efve \u2014 \u65e5\u672c\u8a9e and emoji \U0001f600 2024 12:30",
    "Fish &amp; chips &amp;amp; &lt;b&gt;bold&lt;/b&gt; &#39;quoted&#39;",
    "mojibake: caf\u00c3\u00a9 and \u00e2\u20ac\u0153smart quotes\u00e2\u20ac\x9d",
    "a <|mask|> in <|MASK|> pants",
    "",
    "   \t\n ",
    "jekyll and hyde met dr jekyll",
]


def test_matches_plain_reference(plain):
    tok = default_tokenizer()
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,;:'\"!?-()[]{}<>/\\|@#$%^*_+=~`\t\n\x1b&"
    randoms = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(300)]
    for text in CAPTIONS + randoms:
        assert tok.encode(text) == plain.encode(text), text
        assert tok.encode(text) == plain.encode(text), text  # second call goes through the cache


def test_jekyll_does_not_fail():
    tok = default_tokenizer()
    assert [tok.decoder[i] for i in tok.encode("Jekyll")] == ["jeky", "ll</w>"]


def test_tokenize_rows_padding_and_empty():
    ids = tokenize(["a red coat", "", "  \n "])
    assert ids.dtype == torch.long and ids.shape == (3, 77)
    assert ids[0, :5].tolist() == [49406, 320, 736, 7356, 49407] and ids[0, 5:].abs().sum() == 0
    for row in (1, 2):
        assert ids[row, :2].tolist() == [49406, 49407] and ids[row, 2:].abs().sum() == 0
    assert tokenize("a red coat").shape == (1, 77)


def test_truncation():
    long = " ".join(["word"] * 200)
    ids = tokenize(long, context_length=77)
    assert ids.shape == (1, 77) and ids[0, 0] == 49406 and ids[0, -1] == 49407
    assert ids[0, 1:76].tolist() == default_tokenizer().encode(long)[:75]
    with pytest.raises(InputError, match="caption 1 is 202 tokens long"):
        tokenize(["ok", long], truncate=False)


def test_html_entities_unicode_and_decode_round_trip():
    tok = default_tokenizer()
    assert tok.encode("fish &amp;amp; chips") == tok.encode("fish & chips")
    assert tok.encode("  A  Red\tCOAT ") == tok.encode("a red coat")
    assert tok.decode(tok.encode("caf\u00e9 na\u00efve \u65e5\u672c")) == "caf\u00e9 na\u00efve \u65e5\u672c"
    row = tokenize("a woman, in a red coat!")[0]
    assert tok.decode(row) == "a woman , in a red coat !"
    assert tok.decode(row, skip_special_tokens=False).startswith("<|startoftext|> a woman")


def test_mask_token_round_trip():
    tok = default_tokenizer()
    ids = tok.encode("a <|mask|> coat")
    assert ids == [320, tok.mask_token_id, 7356]
    assert tok.decode(ids) == "a <|mask|> coat"
    assert tok.encode(tok.decode(ids)) == ids
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([49408])
