"""The similar-caption sampler: neighbours by caption tokens, batch composition, determinism, resume
and sharding."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from personsearch.data.samplers import SimilarCaptionSampler, build_sampler, caption_neighbours
from personsearch.errors import InputError
from personsearch.settings import resolve_settings
from personsearch.text import EOT_TOKEN_ID, SOT_TOKEN_ID

#: Word ids of four "topics"; identities 0-3 talk about topic 0, 4-7 topic 1, and so on.
_TOPICS = [[100 + 10 * topic + k for k in range(6)] for topic in range(4)]


def _caption(words: list[int], length: int = 12) -> list[int]:
    row = [SOT_TOKEN_ID, *words, EOT_TOKEN_ID]
    return row + [0] * (length - len(row))


def _dataset(samples_per_id: int = 3, ids: int = 16, seed: int = 0) -> tuple[list[int], np.ndarray]:
    """Each identity: its topic's words, two words of its own, and a word shared by all (no weight)."""
    rng = np.random.default_rng(seed)
    pids, rows = [], []
    for pid in range(ids):
        own = [500 + 2 * pid, 501 + 2 * pid]
        for _ in range(samples_per_id):
            words = [*rng.choice(_TOPICS[pid // 4], size=4, replace=False).tolist(), *own, 999]
            pids.append(pid)
            rows.append(_caption(words))
    return pids, np.asarray(rows, dtype=np.int32)


def _plain_neighbours(pids: list[int], tokens: np.ndarray, count: int) -> dict[int, list[int]]:
    """tf-idf cosine, written out word by word."""
    special = {0, SOT_TOKEN_ID, EOT_TOKEN_ID, 49405}
    bags: dict[int, Counter] = {}
    for pid, row in zip(pids, tokens.tolist(), strict=True):
        bags.setdefault(pid, Counter()).update(t for t in row if t not in special)
    n = len(bags)
    df = Counter(word for bag in bags.values() for word in bag)
    vectors = {}
    for pid, bag in bags.items():
        vec = {w: c * np.log(n / df[w]) for w, c in bag.items()}
        norm = np.sqrt(sum(v * v for v in vec.values())) or 1.0
        vectors[pid] = {w: v / norm for w, v in vec.items()}
    found = {}
    for pid, vec in vectors.items():
        scores = [(-sum(v * vectors[q].get(w, 0.0) for w, v in vec.items()), q) for q in vectors if q != pid]
        found[pid] = [q for _, q in sorted(scores)[:count]]
    return found


def test_neighbours_are_the_identities_described_alike():
    pids, tokens = _dataset()
    found = caption_neighbours(pids, tokens, count=3)
    for pid, near in found.items():
        assert sorted(near) == sorted(q for q in range(16) if q // 4 == pid // 4 and q != pid)
    assert {pid: sorted(v) for pid, v in found.items()} == {
        pid: sorted(v) for pid, v in _plain_neighbours(pids, tokens, 3).items()}
    assert caption_neighbours([0, 0], tokens[:2], count=3) == {0: []}


def test_batches_group_alike_identities_and_use_every_sample_once():
    pids, tokens = _dataset()
    sampler = SimilarCaptionSampler(pids, tokens, batch_size=8, group=4, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(pids)))  # every sample once per epoch
    batches = [order[start : start + 8] for start in range(0, len(order), 8)]
    grouped = 0
    for batch in batches[:-1]:  # the epoch's last batch takes whatever is left
        ids = [pids[i] for i in batch]
        assert len(set(ids)) == len(ids)  # distinct identities while enough remain
        for start in range(0, 8, 4):
            group = ids[start : start + 4]
            grouped += len({pid // 4 for pid in group}) == 1  # an anchor and its three neighbours
    assert grouped >= len(batches) - 2
    # Random batches would rarely put a whole topic together.
    assert grouped > 0


def test_similar_sampler_is_deterministic_resumable_and_sharded():
    pids, tokens = _dataset(samples_per_id=4)
    sampler = SimilarCaptionSampler(pids, tokens, batch_size=8, group=2, seed=5)
    order = list(sampler)
    assert list(SimilarCaptionSampler(pids, tokens, batch_size=8, group=2, seed=5)) == order
    sampler.set_epoch(1)
    assert list(sampler) != order
    resumed = SimilarCaptionSampler(pids, tokens, batch_size=8, group=2, seed=0)
    resumed.load_state_dict({**sampler.state_dict(), "offset": 8})
    assert list(resumed) == list(sampler)[8:]
    shares = [list(SimilarCaptionSampler(pids, tokens, batch_size=8, group=2, seed=5, num_replicas=2, rank=r))
              for r in range(2)]
    assert len(shares[0]) == len(shares[1]) and not set(shares[0]) & set(shares[1])
    assert shares[0][:8] == order[:8] and shares[1][:8] == order[8:16]  # whole batches dealt round-robin


def test_build_sampler_and_settings():
    pids, tokens = _dataset()
    assert isinstance(build_sampler("similar", pids, 8, tokens=tokens, group=3), SimilarCaptionSampler)
    with pytest.raises(ValueError, match="needs the captions' token ids"):
        build_sampler("similar", pids, 8)
    with pytest.raises(ValueError, match="token rows"):
        SimilarCaptionSampler(pids, tokens[:5], batch_size=8)
    settings = resolve_settings(sets=["data.sampler=similar", "data.similar_group=6"], environ={})
    assert settings.data.sampler == "similar" and settings.data.similar_group == 6
    assert resolve_settings(environ={}).data.sampler == "random"
    with pytest.raises(InputError):
        resolve_settings(sets=["data.similar_group=0"], environ={})


def test_colour_neighbours_wear_the_same_colours_whatever_else_they_wear():
    from personsearch.data.samplers import colour_token_ids
    from personsearch.text.tokenizer import default_tokenizer

    tokenizer = default_tokenizer()
    colours = colour_token_ids()
    assert len(colours) == 24 and tokenizer.encode("red")[0] in colours and tokenizer.encode("coat")[0] not in colours
    # Identity i wears colour i // 2 in a garment of kind i % 2: the garment words say "kind", the
    # colour words say "colour"; each identity also has words of its own.
    palette = [tokenizer.encode(word)[0] for word in ("red", "blue", "green", "yellow")]
    kinds = [tokenizer.encode(word)[0] for word in ("coat", "dress")]
    pids, rows = [], []
    for pid in range(8):
        for _ in range(2):
            pids.append(pid)
            rows.append(_caption([palette[pid // 2], kinds[pid % 2], kinds[pid % 2], 500 + pid]))
    tokens = np.asarray(rows, dtype=np.int32)
    by_colour = caption_neighbours(pids, tokens, count=1, only=colours)
    assert by_colour == {pid: [pid ^ 1] for pid in range(8)}  # same colour, the other kind
    only = [palette[0]]  # one kept word: the plain formulation over that word alone agrees
    kept = np.where(np.isin(tokens, only + [SOT_TOKEN_ID, EOT_TOKEN_ID, 0]), tokens, 0)
    assert caption_neighbours(pids, tokens, count=1, only=only)[0] == _plain_neighbours(pids, kept, 1)[0]
    sampler = SimilarCaptionSampler(pids, tokens, batch_size=4, group=2, words="colours")
    assert sampler.neighbours == caption_neighbours(pids, tokens, 16, only=colours)
    with pytest.raises(ValueError, match="words"):
        SimilarCaptionSampler(pids, tokens, batch_size=4, words="nouns")
    settings = resolve_settings(sets=["data.sampler=similar", "data.similar_words=colours"], environ={})
    assert settings.data.similar_words == "colours"
    with pytest.raises(InputError):
        resolve_settings(sets=["data.similar_words=verbs"], environ={})
