"""``model.arch.stem=conv``: stride-2 3x3 convolutions in place of the patch projection.

Checked against a plain formulation written here (``F.conv2d`` calls in float64), through the
weights written and read back, and end to end (train, then eval and export through the CLI).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tests.helpers import TINY_SETS
from typer.testing import CliRunner

from personsearch.cli.app import app
from personsearch.errors import InputError
from personsearch.model import build_clip, config_from_state_dict
from personsearch.model.clip import ConvStem, check_conv_stem
from personsearch.settings import resolve_settings

runner = CliRunner()


def _plain_stem(weights: list[tuple[torch.Tensor, torch.Tensor]], images: torch.Tensor) -> torch.Tensor:
    """The stem written out: conv (stride 2, padding 1), exact GELU between convolutions."""
    x = images.double()
    for number, (weight, bias) in enumerate(weights):
        if number:
            x = 0.5 * x * (1.0 + torch.erf(x / 2.0**0.5))
        x = F.conv2d(x, weight.double(), bias.double(), stride=2, padding=1)
    return x


@pytest.mark.parametrize(("width", "patch", "channels"), [(64, 8, [16, 32, 64]), (48, 4, [24, 48]),
                                                          (768, 16, [96, 192, 384, 768]), (8, 2, [8])])
def test_the_stem_halves_once_per_power_of_two_and_matches_a_plain_formulation(width, patch, channels):
    torch.manual_seed(0)
    stem = ConvStem(width, patch)
    convs = [module for module in stem if isinstance(module, torch.nn.Conv2d)]
    assert [conv.out_channels for conv in convs] == channels
    images = torch.randn(2, 3, 4 * patch, 2 * patch)
    out = stem(images)
    assert out.shape == (2, width, 4, 2)  # the patch grid a patch projection would give
    expected = _plain_stem([(conv.weight, conv.bias) for conv in convs], images)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert stem.weight is convs[0].weight


@pytest.mark.parametrize(("patch", "stride"), [(6, 6), (1, 1), (12, 12), (8, 4)])
def test_a_stem_that_cannot_make_the_grid_is_refused(patch, stride):
    with pytest.raises(InputError, match="conv stem"):
        check_conv_stem(patch, stride)


def test_the_architecture_is_read_back_from_the_weights(tiny_arch):
    tiny_arch.update(stem="conv", patch_size=8)
    model = build_clip(tiny_arch, image_size=(32, 16), stride=8)
    assert type(model.visual.conv1) is ConvStem and model.grid == (4, 2)
    state = model.state_dict()
    assert "visual.conv1.weight" not in state and "visual.conv1.4.weight" in state
    config = config_from_state_dict(state)
    assert (config.stem, config.patch_size, config.vision_width) == ("conv", 8, tiny_arch["vision_width"])
    plain = config_from_state_dict(build_clip(dict(tiny_arch, stem="patch"), image_size=(32, 16), stride=8)
                                   .state_dict())
    assert plain.stem == "patch"
    for gone in ("visual.conv1.2.", "visual.conv1.0."):  # a missing middle or first convolution
        broken = {key: value for key, value in state.items() if not key.startswith(gone)}
        with pytest.raises(InputError, match="stem"):
            config_from_state_dict(broken)
    no_stem = {key: value for key, value in state.items() if not key.startswith("visual.conv1.")}
    with pytest.raises(InputError, match="visual.conv1.weight"):
        config_from_state_dict(no_stem)


def test_settings_refuse_a_stem_that_does_not_fit_the_patches():
    base = ["model.pretrained=null", "model.image_size=[96, 32]", "model.arch.stem=conv"]
    for bad in (["model.arch.patch_size=8", "model.stride=4"], ["model.arch.patch_size=12", "model.stride=12",
                                                                  "model.image_size=[96, 36]"]):
        with pytest.raises(InputError, match="model.arch.stem"):
            resolve_settings(sets=[*base, *bad], environ={})
    settings = resolve_settings(sets=[*base, "model.arch.patch_size=8", "model.stride=8"], environ={})
    assert settings.model.arch.stem == "conv"
    # With pretrained weights the architecture (stem included) comes from the weights: not checked.
    resolve_settings(sets=["model.arch.stem=conv", "model.stride=8"], environ={})


def test_a_conv_stem_run_trains_evaluates_and_exports(prepared_tiny, tmp_path):
    sets = [item for item in TINY_SETS if not item.startswith(("model.stride", "model.arch.patch_size"))]
    sets += ["model.stride=16", "model.arch.patch_size=16", "model.arch.stem=conv", f"runtime.output_dir={tmp_path}"]
    args = ["train", "--data", str(prepared_tiny), "--name", "stem", "--json", "--max-steps", "2"]
    for item in sets:
        args += ["--set", item]
    trained = runner.invoke(app, args)
    assert trained.exit_code == 0, trained.output
    run = tmp_path / "stem"
    from personsearch.runs import load_trained

    model = load_trained(run).clip
    assert type(model.visual.conv1) is ConvStem and len([m for m in model.visual.conv1 if hasattr(m, "weight")]) == 4
    evaluated = runner.invoke(app, ["eval", str(run), "--json", "--split", "test"])
    assert evaluated.exit_code == 0, evaluated.output
    assert 0.0 <= json.loads(evaluated.stdout)["t2i"]["R1"] <= 100.0
    exported = runner.invoke(app, ["export", str(run), "--data", str(prepared_tiny), "--split", "test",
                                   "--out", str(tmp_path / "index"), "--json"])
    assert exported.exit_code == 0, exported.output
    found = runner.invoke(app, ["query", "a man in a black jacket", "--index", str(tmp_path / "index"), "--json",
                                "-k", "2"])
    assert found.exit_code == 0, found.output
    assert len(json.loads(found.stdout)["results"]) == 2
