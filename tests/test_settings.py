"""The settings tree: IRRA defaults, source precedence and one-line errors naming key and source."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personsearch.cli.app import app
from personsearch.errors import InputError
from personsearch.runs import load_run_settings
from personsearch.settings import Settings, resolve_settings

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_defaults_are_the_irra_recipe():
    s = Settings()
    assert s.model.pretrained == "ViT-B/16"
    assert s.model.image_size == (384, 128)
    assert s.model.stride == 16
    assert s.model.temperature == 0.02
    assert s.model.cmt_depth == 4
    assert s.model.text_length == 77
    assert s.model.vocab_size == 49408
    assert s.loss.enabled == ("sdm", "mlm", "id")
    assert s.loss.mlm_weight == 1.0 and s.loss.id_weight == 1.0
    assert s.masking.strategy == "random"
    assert (s.masking.ratio, s.masking.mask_prob, s.masking.random_prob) == (0.15, 0.8, 0.1)
    assert s.optim.optimizer == "Adam"
    assert s.optim.lr == 1e-5 and s.optim.betas == (0.9, 0.999) and s.optim.eps == 1e-3
    assert s.optim.weight_decay == 4e-5 and s.optim.weight_decay_bias == 0.0
    assert s.optim.bias_lr_factor == 2.0 and s.optim.lr_factor == 5.0
    assert s.train.epochs == 60 and s.train.batch_size == 64
    assert s.schedule.mode == "cosine" and s.schedule.warmup_epochs == 5 and s.schedule.warmup_factor == 0.1
    assert s.schedule.milestones == (20, 50) and s.schedule.gamma == 0.1
    assert s.eval.batch_size == 512 and s.eval.split == "test"
    assert s.data.augment is True and s.data.sampler == "random" and s.data.num_instances == 4
    assert s.train.eval_period == 1 and s.train.log_period == 100


def test_precedence_defaults_file_env_set_options(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lr: 2.0e-5\n  weight_decay: 1.0e-4\ntrain:\n  epochs: 10\n  batch_size: 32\n")
    env = {"PERSONSEARCH_OPTIM__WEIGHT_DECAY": "3e-4", "PERSONSEARCH_TRAIN__EPOCHS": "20",
           "PERSONSEARCH_TRAIN__BATCH_SIZE": "16"}
    s = resolve_settings(config=cfg, environ=env, sets=["train.epochs=30", "train.batch_size=8"],
                         overrides={"train.batch_size": 4, "train.max_steps": None})
    assert s.optim.lr == 2e-5  # file beats default
    assert s.optim.weight_decay == 3e-4  # env beats file
    assert s.train.epochs == 30  # --set beats env
    assert s.train.batch_size == 4  # a verb's option beats --set
    assert s.train.max_steps is None  # an unset option does not override
    assert s.optim.eps == 1e-3  # untouched default


def test_set_types_values_by_the_model():
    s = resolve_settings(sets=["model.image_size=[256, 128]", "masking.strategy=attention",
                               "data.augment=false", "model.pretrained=null", "optim.lr=2e-5"], environ={})
    assert s.model.image_size == (256, 128)
    assert s.masking.strategy == "attention"
    assert s.data.augment is False
    assert s.model.pretrained is None
    assert s.optim.lr == 2e-5


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("optim.lrr=1", "unknown setting 'optim.lrr' (from --set optim.lrr=1)"),
        ("optim.lr=abc", "invalid setting optim.lr = 'abc' (from --set optim.lr=abc)"),
        ("nosuch.key=1", "unknown setting 'nosuch'"),
        ("masking.strategy=magic", "masking.strategy"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("loss.names=sdm+foo", "unknown loss 'foo'"),
        ("optim.lr", "expected section.key=value"),
    ],
)
def test_set_errors_name_the_key_and_source(item, needle):
    with pytest.raises(InputError) as err:
        resolve_settings(sets=[item], environ={})
    assert needle in str(err.value)


def test_env_errors_name_the_variable():
    with pytest.raises(InputError) as err:
        resolve_settings(environ={"PERSONSEARCH_OPTIM__LR": "fast"})
    assert "environment PERSONSEARCH_OPTIM__LR" in str(err.value)


def test_file_errors_point_at_the_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  stride: 16\noptim:\n  lr: 1e-5\n  learning_rate: 3\n")
    with pytest.raises(InputError) as err:
        resolve_settings(config=cfg, environ={})
    assert f"{cfg}:5" in str(err.value) and "optim.learning_rate" in str(err.value)

    cfg.write_text("optim:\n  lr: [1, 2\n")
    with pytest.raises(InputError) as err:
        resolve_settings(config=cfg, environ={})
    assert "invalid YAML" in str(err.value) and "line" in str(err.value)

    with pytest.raises(InputError, match="config file not found"):
        resolve_settings(config=tmp_path / "missing.yaml", environ={})

    cfg.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="expected a mapping"):
        resolve_settings(config=cfg, environ={})


def test_yaml_alias_bomb_and_unsafe_tags_are_refused(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]")
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="alias"):
        resolve_settings(config=bomb, environ={})
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("optim: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(InputError, match="invalid YAML"):
        resolve_settings(config=unsafe, environ={})


def test_shipped_configs_resolve():
    for cfg in sorted((REPO / "configs").glob("*.yaml")):
        resolve_settings(config=cfg, environ={})
    agm = resolve_settings(config=REPO / "configs" / "agm_cuhk.yaml", environ={})
    assert agm.masking.strategy == "attention"


def test_run_settings_round_trip(tmp_path):
    from personsearch.runs import create_run

    s = resolve_settings(sets=["optim.lr=3e-5", "masking.strategy=attention"], environ={})
    run = create_run(s, name="r1", output_dir=tmp_path)
    back = load_run_settings(run)
    assert back == s and back.fingerprint() == s.fingerprint()
    with pytest.raises(InputError, match="already exists"):
        create_run(s, name="r1", output_dir=tmp_path)
    with pytest.raises(InputError, match="no config.yaml"):
        load_run_settings(tmp_path)


def test_cli_config_show_json():
    result = runner.invoke(app, ["config", "show", "--config", str(REPO / "configs" / "agm_cuhk.yaml"),
                                 "--set", "optim.lr=2e-5", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["optim"]["lr"] == 2e-05
    assert data["masking"]["strategy"] == "attention"


def test_cli_config_show_yaml_and_errors():
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0 and "cmt_depth: 4" in result.stdout
    for item, needle in (("optim.lrr=1", "optim.lrr"), ("optim.lr=abc", "optim.lr")):
        result = runner.invoke(app, ["config", "show", "--set", item])
        assert result.exit_code == 2
        assert needle in result.output and "Traceback" not in result.output


def test_help_and_config_show_do_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from personsearch.cli.app import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['config', 'show', '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "import personsearch.data.synthetic, personsearch.sheet  # prepare synthetic --preview\n"
        "assert 'torch' not in sys.modules, 'the preview path imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version_flag():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and "personsearch" in result.stdout


def test_bounds_leave_room_for_real_models_and_the_shipped_configs():
    """The bounds leave room for every real CLIP: B/32, L/14 at 336, bigG/14."""
    for config in [*sorted((REPO / "configs").glob("*.yaml")), REPO / "src" / "personsearch" / "demo.yaml"]:
        resolve_settings(config=config, environ={})
    arches = [
        ("[384, 128]", 32, dict(embed_dim=512, vision_width=768, vision_layers=12, vision_heads=12, patch_size=32)),
        ("[336, 336]", 14, dict(embed_dim=768, vision_width=1024, vision_layers=24, vision_heads=16, patch_size=14,
                                text_width=768, text_layers=12, text_heads=12)),
        ("[224, 224]", 14, dict(embed_dim=1280, vision_width=1664, vision_layers=48, vision_heads=16, patch_size=14,
                                text_width=1280, text_layers=32, text_heads=20)),
    ]
    for size, stride, arch in arches:
        sets = ["model.pretrained=null", f"model.image_size={size}", f"model.stride={stride}"]
        sets += [f"model.arch.{key}={value}" for key, value in arch.items()]
        resolve_settings(sets=sets, environ={})
    edge = ["runtime.seed=4294967295", "optim.betas=[0, 0.9999]", "masking.ratio=1", "train.batch_size=100000",
            "model.text_length=77", "model.vocab_size=49408", "data.workers=0", "optim.momentum=0"]
    resolve_settings(sets=edge, environ={})


def test_vocab_and_context_bounds_match_the_tokenizer():
    from personsearch.settings import MAX_TEXT_LENGTH, TOKENIZER_VOCAB
    from personsearch.text import default_tokenizer

    tokenizer = default_tokenizer()
    assert TOKENIZER_VOCAB == tokenizer.vocab_size == Settings().model.vocab_size
    assert max(tokenizer.mask_token_id, tokenizer.sot_token_id, tokenizer.eot_token_id) == TOKENIZER_VOCAB - 1
    assert MAX_TEXT_LENGTH == Settings().model.text_length == 77
