"""Tokenizer speed: 20,000 typical captions, ours beside the plain formulation (the same BPE
with ftfy on every caption and no per-word cache), measured in the same run.

    python benchmarks/bench_tokenizer.py [--captions 20000]
"""

from __future__ import annotations

import argparse
import html
import json
import random
import time

import ftfy
import numpy as np
import regex

from personsearch.text import ClipTokenizer
from personsearch.text.tokenizer import _WORD_PATTERN

COLOURS = ["red", "black", "white", "grey", "blue", "dark blue", "green", "yellow", "pink", "brown", "purple"]
UPPER = ["t-shirt", "shirt", "jacket", "coat", "sweater", "hoodie", "dress", "blouse", "vest"]
LOWER = ["pants", "jeans", "shorts", "skirt", "trousers", "leggings"]
EXTRA = [
    "carrying a black backpack",
    "holding a phone in her right hand",
    "with a white shoulder bag",
    "wearing glasses",
    "with an umbrella",
    "with short black hair",
    "with long brown hair tied back",
]


def captions(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        who = rng.choice(
            ["The woman", "A man", "This person", "The young lady", "An older man", "The pedestrian"]
        )
        parts = [
            f"{who} is wearing a {rng.choice(COLOURS)} {rng.choice(UPPER)}",
            f"{rng.choice(COLOURS)} {rng.choice(LOWER)} and {rng.choice(COLOURS)} shoes",
        ]
        parts += rng.sample(EXTRA, rng.randint(1, 3))
        text = (
            ", ".join(parts)
            + ". "
            + rng.choice(
                [
                    "",
                    "She is walking towards the camera.",
                    "He's looking down at the ground.",
                    "The person walks fast.",
                ]
            )
        )
        out.append(text.strip())
    return out


def plain_encode(tok: ClipTokenizer, text: str) -> list[int]:
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    text = regex.sub(r"\s+", " ", text).strip().lower()
    ids: list[int] = []
    for word in _WORD_PATTERN.findall(text):
        symbols = "".join(tok.byte_encoder[b] for b in word.encode("utf-8"))
        ids.extend(tok.encoder[piece] for piece in tok.bpe(symbols))
    return ids


def plain_matrix(tok: ClipTokenizer, texts: list[str], length: int = 77) -> np.ndarray:
    rows = np.zeros((len(texts), length), dtype=np.int64)
    for row, text in enumerate(texts):
        ids = [tok.sot_token_id, *plain_encode(tok, text), tok.eot_token_id][:length]
        ids[-1] = tok.eot_token_id
        rows[row, : len(ids)] = ids
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=20000)
    parser.add_argument("--json", action="store_true", help="print only a JSON list of result rows")
    args = parser.parse_args()
    texts = captions(args.captions)

    reference_tok = ClipTokenizer()
    start = time.perf_counter()
    reference = plain_matrix(reference_tok, texts)
    plain_seconds = time.perf_counter() - start

    ours_tok = ClipTokenizer()  # fresh: the per-word cache starts empty, as in a new process
    start = time.perf_counter()
    ours = ours_tok.token_matrix(texts)
    ours_seconds = time.perf_counter() - start

    assert np.array_equal(ours, reference), "token ids differ from the plain formulation"
    per_10k = 10000 / len(texts)
    if args.json:
        row = {
            "figure": f"tokenize {len(texts):,} captions (s per 10k)", "unit": "s", "ours": ours_seconds * per_10k,
            "reference": plain_seconds * per_10k, "higher_is_better": False, "goal": "well under 1 s per 10k",
            "note": "identical ids",
        }
        print(json.dumps([row]))
        return
    print(f"{len(texts):,} captions, {int((ours > 0).sum()):,} tokens; identical ids: yes")
    print(f"{'':24}{'total s':>10}{'s per 10k':>12}")
    print(f"{'plain (ftfy, no cache)':24}{plain_seconds:10.3f}{plain_seconds * per_10k:12.3f}")
    print(f"{'personsearch':24}{ours_seconds:10.3f}{ours_seconds * per_10k:12.3f}")
    print(f"speed-up: {plain_seconds / ours_seconds:.1f}x")


if __name__ == "__main__":
    main()
