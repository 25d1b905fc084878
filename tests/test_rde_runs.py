"""RDE run folders (``configs.yaml`` + ``best.pth`` in RDE's layout: ``base_model.*`` beside
``visul_emb_layer.*`` / ``texual_emb_layer.*``, Linear, conv, attention and projection weights in
fp16, no ``logit_scale``) evaluate, export and query with RDE's "BGE+TSE" score: checked against a
plain recomputation of that score (the global and the token-selection cosines, each normalised,
averaged; R1 and mAP counted here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tests.test_tse import plain_image_tse, plain_text_tse
from typer.testing import CliRunner

from personsearch.cli.app import app
from personsearch.errors import InputError
from personsearch.model.tse import ImageTokenSelection, TextTokenSelection

runner = CliRunner()
#: RDE's convert_weights: these become fp16; LayerNorm, BatchNorm and the embeddings stay fp32.
_HALF = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias", "c_fc.weight", "c_fc.bias",
         "c_proj.weight", "c_proj.bias", "conv1.weight", "visual.proj", "text_projection")
TSE_WIDTH = 32
CONFIG = ("dataset_name: CUHK-PEDES\nimg_size: !!python/tuple\n- 64\n- 32\nstride_size: 16\n"
          "loss_names: {loss}\ntemperature: 0.02\ntext_length: 77\nvocab_size: 49408\n{extra}")


def _rde_state(trained_run: Path, embed_dim: int) -> dict[str, torch.Tensor]:
    ours = load_file(str(trained_run / "checkpoints" / "best.safetensors"))
    state = {key: value for key, value in ours.items()
             if key.startswith("base_model.") and key != "base_model.logit_scale"}
    torch.manual_seed(5)
    heads = {"visul_emb_layer": ImageTokenSelection(embed_dim, TSE_WIDTH),
             "texual_emb_layer": TextTokenSelection(embed_dim, TSE_WIDTH)}
    for name, head in heads.items():
        head.mlp.bns[0].running_mean.uniform_(-0.1, 0.1)
        head.mlp.bns[0].running_var.uniform_(0.5, 1.5)
        head.mlp.bns[0].weight.data.uniform_(0.5, 1.5)
        for key, value in head.state_dict().items():
            half = key.endswith(("weight", "bias")) and not key.startswith("mlp.bns")
            state[f"{name}.{key}"] = value.half() if half else value
    return {key: value.half() if key.endswith(_HALF) and key.startswith("base_model.") else value
            for key, value in state.items()}


@pytest.fixture(scope="module")
def rde_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rde") / "rde_run"
    folder.mkdir()
    embed_dim = load_file(str(trained_run / "checkpoints" / "best.safetensors"))["base_model.text_projection"].shape[1]
    torch.save({"model": _rde_state(trained_run, embed_dim)}, folder / "best.pth")
    (folder / "configs.yaml").write_text(CONFIG.format(loss="TAL+sr0.5_tau0.015_margin0.1_n0.2", extra=""))
    return folder


def _plain_metrics(similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor) -> dict:
    """R1 and mAP counted one query at a time (ties: the lower gallery index first)."""
    r1, aps = 0, []
    for row, pid in zip(similarity.tolist(), query_pids.tolist(), strict=True):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        hits = [int(gallery_pids[j]) == pid for j in order]
        r1 += hits[0]
        found, precisions = 0, []
        for rank, hit in enumerate(hits, 1):
            if hit:
                found += 1
                precisions.append(found / rank)
        aps.append(sum(precisions) / max(found, 1))
    return {"R1": 100.0 * r1 / len(aps), "mAP": 100.0 * sum(aps) / len(aps)}


def test_eval_of_an_rde_run_is_rdes_bge_plus_tse_score(rde_run, prepared_tiny):
    from personsearch.data.datasets import GalleryImages, QueryCaptions
    from personsearch.data.prepared import PreparedDataset
    from personsearch.data.transforms import build_transform
    from personsearch.runs import load_trained

    result = runner.invoke(app, ["eval", str(rde_run), "--data", str(prepared_tiny), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["t2i"]

    model = load_trained(rde_run)
    clip, image_head, text_head = model.clip.base, model.clip.image_head, model.clip.text_head
    assert image_head.ratio == text_head.ratio == 0.5  # read from "sr0.5" in loss_names
    prepared = PreparedDataset.load(prepared_tiny)
    queries = QueryCaptions(prepared, "test")
    gallery = GalleryImages(prepared, "test", build_transform(model.settings.model.image_size, train=False))
    images = torch.stack([gallery.images[i]["images"] for i in range(len(gallery))])
    with torch.no_grad():
        image_tokens, class_rows = clip.encode_image_tokens_attention(images)
        text_tokens, eot_rows = clip.encode_text_tokens(queries.caption_ids, attention_layers=1)
    eot = queries.caption_ids.argmax(dim=-1)
    bge_text = text_tokens[torch.arange(len(eot)), eot]
    tse_text = torch.tensor(plain_text_tse(text_head, text_tokens, queries.caption_ids, eot_rows, train=False))
    tse_image = torch.tensor(plain_image_tse(image_head, image_tokens, class_rows, train=False))
    similarity = (F.normalize(bge_text.double(), dim=1) @ F.normalize(image_tokens[:, 0].double(), dim=1).t()
                  + F.normalize(tse_text, dim=1) @ F.normalize(tse_image, dim=1).t()) / 2
    want = _plain_metrics(similarity, queries.pids, gallery.pids)
    assert report["R1"] == pytest.approx(want["R1"], abs=1e-6)
    assert report["mAP"] == pytest.approx(want["mAP"], abs=1e-3)
    assert sorted(p.name for p in rde_run.iterdir()) == ["best.pth", "configs.yaml"]  # nothing written there


def test_an_rde_index_holds_joint_embeddings_and_text_queries_load_the_text_side_only(rde_run, synthetic_raw,
                                                                                      tmp_path):
    from personsearch.retrieval.export import export_run
    from personsearch.retrieval.gallery import GalleryIndex
    from personsearch.retrieval.query import run_queries
    from personsearch.runs import load_trained

    export_run(rde_run, tmp_path / "index", images=synthetic_raw / "imgs", device="cpu")
    index = GalleryIndex.open(tmp_path / "index")
    full = load_trained(rde_run)
    assert index.dim == full.clip.embed_dim == full.clip.base.embed_dim + TSE_WIDTH
    found = run_queries(["a woman in a red coat"], index=tmp_path / "index", k=3, device="cpu")
    assert found.model.towers == ("text",) and found.model.clip.image_head is None
    assert found.model.fingerprint == full.fingerprint == index.model_fingerprint
    ids = torch.tensor([[49406, 320, 2308, 49407] + [0] * 73])
    with torch.no_grad():
        assert torch.equal(found.model.clip.encode_text(ids), full.clip.encode_text(ids))
        joint = full.clip.encode_text(ids)
    assert joint.norm(dim=1).item() == pytest.approx(1.0, abs=1e-6)
    assert len(found.results[0].results) == 3


@pytest.mark.parametrize("extra, loss, ratio", [("select_ratio: 0.2\n", "TAL", 0.2), ("", "TAL", 0.3),
                                                ("", "TRL+sr0.4_tau0.02_margin0.2_n0.0", 0.4)])
def test_the_select_ratio_comes_from_configs_yaml(rde_run, tmp_path, extra, loss, ratio):
    from personsearch.runs import load_trained

    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "best.pth").symlink_to(rde_run / "best.pth")
    (folder / "configs.yaml").write_text(CONFIG.format(loss=loss, extra=extra))
    model = load_trained(folder, towers=("text",))
    assert model.clip.text_head.ratio == ratio
    assert model.clip.text_head.k == int(75 * ratio)


def test_a_different_ratio_is_a_different_model(rde_run, tmp_path):
    from personsearch.runs import load_trained

    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "best.pth").symlink_to(rde_run / "best.pth")
    (folder / "configs.yaml").write_text(CONFIG.format(loss="TAL+sr0.3_tau0.015_margin0.1_n0.2", extra=""))
    assert load_trained(folder).fingerprint != load_trained(rde_run).fingerprint


@pytest.mark.parametrize("damage, words", [("no-image-head", "no visul_emb_layer"), ("wrong-width", "does not fit"),
                                           ("bad-ratio", "select_ratio 1.5")])
def test_a_damaged_rde_run_is_one_clear_message(rde_run, tmp_path, damage, words):
    from personsearch.runs import load_trained

    folder = tmp_path / "damaged"
    folder.mkdir()
    state = torch.load(rde_run / "best.pth", weights_only=True)["model"]
    loss, extra = "TAL+sr0.5_tau0.015_margin0.1_n0.2", ""
    if damage == "no-image-head":
        state = {k: v for k, v in state.items() if not k.startswith("visul_emb_layer.")}
    elif damage == "wrong-width":
        state["texual_emb_layer.linear.weight"] = torch.zeros(TSE_WIDTH, 7, dtype=torch.float16)
    else:
        extra = "select_ratio: 1.5\n"
    torch.save({"model": state}, folder / "best.pth")
    (folder / "configs.yaml").write_text(CONFIG.format(loss=loss, extra=extra))
    with pytest.raises(InputError) as caught:
        load_trained(folder)
    assert words in caught.value.message
