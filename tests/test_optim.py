"""IRRA's parameter groups, optimizers and per-epoch schedules."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from personsearch.engine.optim import (
    build_optimizer,
    build_param_groups,
    build_scheduler,
    scheduled_lr,
)
from personsearch.errors import InputError
from personsearch.settings import OptimSettings, ScheduleSettings


class TinyIRRA(nn.Module):
    """The module names of IRRA's model, at toy size."""

    def __init__(self) -> None:
        super().__init__()
        self.base_model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.ln_pre_t = nn.LayerNorm(4)
        self.ln_pre_i = nn.LayerNorm(4)
        self.ln_post = nn.LayerNorm(4)
        self.cross_attn = nn.MultiheadAttention(4, 1)
        self.cross_modal_transformer = nn.Sequential(nn.Linear(4, 4))
        self.classifier = nn.Linear(4, 3)
        self.mlm_head = nn.Sequential(nn.Linear(4, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


LR, WD = 1e-5, 4e-5
# DESIGN.md's table: (lr, weight decay) per kind of parameter.
EXPECTED = {
    "base_model.0.weight": (LR, WD),
    "base_model.0.bias": (LR * 2, 0.0),
    "base_model.1.weight": (LR, WD),
    "ln_pre_t.weight": (LR, WD),
    "ln_pre_i.bias": (LR * 2, 0.0),
    "ln_post.weight": (LR, WD),
    "cross_attn.in_proj_weight": (LR * 5, WD),
    "cross_attn.in_proj_bias": (LR * 2, 0.0),
    "cross_attn.out_proj.weight": (LR * 5, WD),
    "cross_attn.out_proj.bias": (LR * 2, 0.0),
    "cross_modal_transformer.0.weight": (LR * 5, WD),
    "cross_modal_transformer.0.bias": (LR * 2, 0.0),
    "classifier.weight": (LR * 5, WD),
    "classifier.bias": (LR * 5, 0.0),
    "mlm_head.0.weight": (LR * 5, WD),
    "mlm_head.0.bias": (LR * 5, 0.0),
}


def test_param_groups_follow_irra_table():
    model = TinyIRRA()
    groups = build_param_groups(model, OptimSettings())
    seen = {}
    for group in groups:
        assert group["initial_lr"] == group["lr"]
        assert len(group["names"]) == len(group["params"])
        for name, param in zip(group["names"], group["params"], strict=True):
            assert param is dict(model.named_parameters())[name]
            seen[name] = (group["lr"], group["weight_decay"])
    assert not any(name.startswith("frozen") for name in seen)
    for name, (lr, wd) in EXPECTED.items():
        assert seen[name] == pytest.approx((lr, wd), rel=1e-12), name
    assert set(seen) == {n for n, p in model.named_parameters() if p.requires_grad}
    keys = [(g["lr"], g["weight_decay"]) for g in groups]
    assert len(keys) == len(set(keys)) == 4  # lr, 2lr without decay, 5lr, 5lr without decay


def test_settings_change_factors():
    optim = OptimSettings(lr=1e-3, lr_factor=10, bias_lr_factor=1, weight_decay=0.1, weight_decay_bias=0.01)
    groups = build_param_groups(TinyIRRA(), optim)
    by_name = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["names"]}
    assert by_name["cross_attn.in_proj_bias"] == (1e-3 * 1, 0.01)
    assert by_name["classifier.bias"] == (1e-3 * 10, 0.01)
    assert by_name["mlm_head.0.weight"] == (1e-3 * 10, 0.1)


@pytest.mark.parametrize(
    ("name", "cls", "checks"),
    [
        ("Adam", torch.optim.Adam, {"betas": (0.9, 0.999), "eps": 1e-3}),
        ("AdamW", torch.optim.AdamW, {"betas": (0.9, 0.999), "eps": 1e-3}),
        ("SGD", torch.optim.SGD, {"momentum": 0.9}),
    ],
)
def test_optimizer_kinds(name, cls, checks):
    optimizer = build_optimizer(TinyIRRA(), OptimSettings(optimizer=name))
    assert type(optimizer) is cls
    for group in optimizer.param_groups:
        for key, value in checks.items():
            assert group[key] == value
    loss = sum(p.sum() for g in optimizer.param_groups for p in g["params"])
    loss.backward()
    optimizer.step()  # the extra "names"/"initial_lr" keys do not disturb the update


def test_no_trainable_parameters_is_named():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(InputError, match="no trainable parameters"):
        build_param_groups(model, OptimSettings())


def reference_lr(e: int, lr: float, s: ScheduleSettings, total: int) -> float:
    """DESIGN.md / IRRA formulas written out independently."""
    w = s.warmup_epochs
    if e < w:
        return lr * (
            s.warmup_factor if s.warmup_method == "constant" else s.warmup_factor * (1 - e / w) + e / w
        )
    r = (e - w) / (total - w)
    t = s.target_lr
    return {
        "cosine": lambda: t + (lr - t) * (1 + math.cos(math.pi * r)) / 2,
        "step": lambda: lr * s.gamma ** sum(1 for m in s.milestones if m <= e),
        "exp": lambda: lr * s.gamma ** (e - w),
        "poly": lambda: t + (lr - t) * (1 - r) ** s.power,
        "linear": lambda: t + (lr - t) * (1 - r),
        "constant": lambda: lr,
    }[s.mode]()


MODES = ["cosine", "step", "exp", "poly", "linear", "constant"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("warmup_method", ["linear", "constant"])
def test_scheduler_follows_formulas_every_epoch(mode, warmup_method):
    schedule = ScheduleSettings(
        mode=mode, warmup_method=warmup_method, milestones=(8, 15, 15), gamma=0.5, target_lr=1e-7, power=0.9
    )
    epochs = 20
    optimizer = build_optimizer(TinyIRRA(), OptimSettings())
    scheduler = build_scheduler(optimizer, schedule, epochs)
    bases = [g["initial_lr"] for g in optimizer.param_groups]
    for epoch in range(epochs):
        for group, base in zip(optimizer.param_groups, bases, strict=True):
            expected = reference_lr(epoch, base, schedule, epochs)
            assert group["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-20), (mode, epoch)
            assert scheduled_lr(epoch, base, schedule, epochs) == pytest.approx(
                expected, rel=1e-12, abs=1e-20
            )
        optimizer.step()
        scheduler.step()


def test_irra_default_schedule_values():
    s = ScheduleSettings()
    assert scheduled_lr(0, 1e-5, s, 60) == pytest.approx(1e-6)
    assert scheduled_lr(4, 1e-5, s, 60) == pytest.approx(1e-5 * (0.1 * 0.2 + 0.8))
    assert scheduled_lr(5, 1e-5, s, 60) == pytest.approx(1e-5)
    assert scheduled_lr(59, 1e-5, s, 60) == pytest.approx(1e-5 * 0.5 * (1 + math.cos(math.pi * 54 / 55)))
    no_warmup = ScheduleSettings(warmup_epochs=0)
    assert scheduled_lr(0, 1e-5, no_warmup, 60) == 1e-5


def test_scheduler_state_round_trip_through_json():
    schedule = ScheduleSettings(mode="step", milestones=(3, 6), warmup_epochs=2)
    model = TinyIRRA()
    optimizer = build_optimizer(model, OptimSettings())
    scheduler = build_scheduler(optimizer, schedule, 10)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    saved = json.loads(json.dumps(scheduler.state_dict()))
    lrs = [g["lr"] for g in optimizer.param_groups]

    fresh = build_optimizer(model, OptimSettings())
    restored = build_scheduler(fresh, ScheduleSettings(), 60)  # resume uses the saved schedule
    restored.load_state_dict(saved)
    assert restored.last_epoch == 4
    assert [g["lr"] for g in fresh.param_groups] == lrs
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        fresh.step()
        restored.step()
        assert [g["lr"] for g in fresh.param_groups] == [g["lr"] for g in optimizer.param_groups]


def test_unsorted_milestones_are_named():
    optimizer = build_optimizer(TinyIRRA(), OptimSettings())
    with pytest.raises(InputError, match="schedule.milestones"):
        build_scheduler(optimizer, ScheduleSettings(milestones=(50, 20)), 60)
