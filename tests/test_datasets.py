"""torch datasets, image loading, transforms and the samplers."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from _raw_datasets import standard_records, write_raw
from personsearch.data import (
    GalleryImages,
    IdentitySampler,
    PreparedDataset,
    QueryCaptions,
    ShuffleSampler,
    TrainCaptions,
    build_sampler,
    build_transform,
    collate_skipping,
    load_rgb,
    prepare_dataset,
)
from personsearch.data.transforms import CLIP_MEAN, CLIP_STD, ImageLoadError
from personsearch.errors import RunFailure


@pytest.fixture()
def prepared(tmp_path) -> PreparedDataset:
    records = standard_records("CUHK-PEDES", {"train": [30, 10, 20], "test": [4, 8]})
    write_raw(tmp_path / "raw", "CUHK-PEDES", records)
    prepare_dataset("CUHK-PEDES", tmp_path / "raw", tmp_path / "prep", workers=1)
    return PreparedDataset.load(tmp_path / "prep")


def test_load_rgb_modes(tmp_path):
    exif = Image.new("RGB", (20, 10), (200, 10, 10))
    info = Image.Exif()
    info[0x0112] = 6  # rotate 90 degrees on display
    exif.save(tmp_path / "exif.jpg", exif=info.tobytes())
    assert load_rgb(tmp_path / "exif.jpg").size == (10, 20)
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    red = np.asarray(load_rgb(tmp_path / "cmyk.jpg"))[0, 0]
    assert red[0] > 200 and red[1] < 60
    Image.new("L", (4, 4), 77).save(tmp_path / "grey.png")
    assert np.asarray(load_rgb(tmp_path / "grey.png"))[0, 0].tolist() == [77, 77, 77]
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert np.asarray(load_rgb(tmp_path / "clear.png"))[0, 0].tolist() == [255, 255, 255]
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    deep = load_rgb(tmp_path / "deep.png")
    assert deep.mode == "RGB" and np.asarray(deep)[0, 0].tolist() == [255, 255, 255]
    palette = Image.new("P", (4, 4), 3)
    palette.save(tmp_path / "palette.gif")
    assert load_rgb(tmp_path / "palette.gif").mode == "RGB"


def test_load_rgb_failures(tmp_path, monkeypatch):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        load_rgb(tmp_path / "bad.jpg")
    with pytest.raises(ImageLoadError, match="file not found"):
        load_rgb(tmp_path / "none.jpg")
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="decompression-bomb guard"):
        load_rgb(tmp_path / "big.png")


def test_transforms():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 30, 3), dtype=np.uint8))
    plain = build_transform((48, 16), train=False)(image)
    assert plain.shape == (3, 48, 16) and plain.dtype == torch.float32
    resized = np.asarray(image.resize((16, 48), Image.BILINEAR), dtype=np.float64) / 255.0  # IRRA's T.Resize
    expected = (resized - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    np.testing.assert_allclose(plain.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    torch.manual_seed(0)
    unaugmented = [build_transform((48, 16), train=True, augment=False)(image) for _ in range(8)]
    assert all(torch.equal(u, plain) or torch.equal(u, plain.flip(-1)) for u in unaugmented)  # IRRA keeps the flip
    torch.manual_seed(0)
    augmented = [build_transform((48, 16), train=True, augment=True)(image) for _ in range(4)]
    assert all(a.shape == (3, 48, 16) for a in augmented)
    assert any(not torch.equal(a, plain) for a in augmented)


def test_train_dataset_and_skipping_collate(prepared):
    dataset = TrainCaptions(prepared, build_transform((32, 16), train=True))
    assert len(dataset) == 12 and prepared.num_train_ids == 3
    item = dataset[0]
    assert item["images"].shape == (3, 32, 16) and item["caption_ids"].dtype == torch.long
    assert (item["pids"], item["image_ids"]) == (2, 0)  # id 30 is the largest of 10, 20, 30
    assert torch.equal(item["caption_ids"], torch.from_numpy(prepared.tokens[0]).long())
    assert [dataset[i]["pids"] for i in range(0, 12, 4)] == [2, 0, 1]
    broken = prepared.image_path(prepared.entries("train")[1])
    broken.write_bytes(b"not an image any more")
    assert dataset[2] is None and dataset[3] is None
    loader = DataLoader(dataset, batch_size=4, shuffle=False, collate_fn=collate_skipping)
    batches = list(loader)
    assert [b["skipped"] for b in batches] == [2, 0, 0]
    assert batches[0]["images"].shape == (2, 3, 32, 16) and batches[0]["pids"].tolist() == [2, 2]
    assert collate_skipping([None, None]) == {"skipped": 2}


def test_evaluation_datasets(prepared):
    gallery = GalleryImages(prepared, "test", build_transform((32, 16)))
    queries = QueryCaptions(prepared, "test")
    assert gallery.pids.tolist() == [4, 4, 8, 8]
    assert queries.pids.tolist() == [4, 4, 4, 4, 8, 8, 8, 8]
    assert queries.caption_ids.shape == (8, 77) and queries.caption_ids.dtype == torch.long
    assert gallery[3]["images"].shape == (3, 32, 16) and queries[5]["pids"] == 8
    prepared.image_path(prepared.entries("test")[0]).write_bytes(b"")
    with pytest.raises(RunFailure, match="gallery image of entry 6 is unreadable"):
        gallery[0]


def test_identity_sampler_batches_and_determinism():
    pids = [pid for pid in range(10) for _ in range(pid % 4 + 1)]  # 1..4 samples per identity
    sampler = IdentitySampler(pids, batch_size=8, num_instances=2, seed=5)
    order = list(sampler)
    assert len(order) == len(sampler) and len(order) % 8 == 0 and len(order) > 0
    for start in range(0, len(order), 8):
        batch = [pids[i] for i in order[start : start + 8]]
        counts = Counter(batch)
        assert len(counts) == 4 and set(counts.values()) == {2}
    again = IdentitySampler(pids, batch_size=8, num_instances=2, seed=5)
    assert list(again) == order
    sampler.set_epoch(1)
    assert list(sampler) != order
    state = sampler.state_dict()
    resumed = IdentitySampler(pids, batch_size=8, num_instances=2, seed=0)
    resumed.load_state_dict({**state, "offset": 8})
    assert list(resumed) == list(sampler)[8:]


def test_identity_sampler_matches_irra_groups():
    # Identities with fewer than K samples are drawn with replacement; more than K: leftover dropped.
    pids = [0] * 5 + [1] + [2] * 3 + [3] * 4
    order = list(IdentitySampler(pids, batch_size=4, num_instances=2, seed=1))
    counts = Counter(pids[i] for i in order)
    assert counts[1] == 2 and all(count % 2 == 0 for count in counts.values())
    assert counts[0] <= 4 and counts[2] == 2 and counts[3] <= 4


def test_samplers_shard_disjointly():
    pids = [pid for pid in range(12) for _ in range(4)]
    shares = [list(IdentitySampler(pids, 8, 4, seed=2, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(share) for share in shares}) == 1
    whole = list(IdentitySampler(pids, 8, 4, seed=2, num_replicas=1, rank=0))
    assert sorted(sum(shares, [])) == sorted(whole[: 3 * len(shares[0])])
    random_shares = [list(ShuffleSampler(10, seed=3, num_replicas=4, rank=r)) for r in range(4)]
    assert [len(s) for s in random_shares] == [3, 3, 3, 3]
    assert set(sum(random_shares, [])) == set(range(10))
    assert sorted(list(ShuffleSampler(10, seed=3))) == list(range(10))
    assert isinstance(build_sampler("random", pids, 8), ShuffleSampler)
    with pytest.raises(ValueError, match="multiple of num_instances"):
        build_sampler("identity", pids, 6, num_instances=4)


def test_bytes_round_trip_of_prepared_tokens(prepared):
    buffer = io.BytesIO()
    np.save(buffer, prepared.tokens)
    assert buffer.getvalue() == (prepared.path / "tokens.npy").read_bytes()
