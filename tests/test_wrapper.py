"""The wrapper protocol: phase_of / observe through plain, wrapped and nested optimizers."""

import math

import pytest
import torch
from torch import nn

from groktimizer import (
    CDM,
    AccuracySwitch,
    FilteredOptimizer,
    GradFilterEMA,
    GROKtimizer,
    Guard,
    OptimizerWrapper,
    StepSwitch,
    observe,
    phase_of,
)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _step(model, opt):
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 4, generator=gen), torch.randn(16, 1, generator=gen)
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def test_plain_optimizer_has_no_phase_and_no_events():
    opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    assert phase_of(opt) is None
    assert observe(opt, 10, train_acc=1.0, train_loss=0.1, closure=None) == []
    assert phase_of(CDM(_model().parameters(), lr=0.1, weight_decay=1e-2)) is None


def test_single_phase_wrappers_report_no_phase():
    m = _model()
    guarded = Guard(CDM(m.parameters(), lr=0.1, weight_decay=1e-2))
    filtered = FilteredOptimizer(torch.optim.Adam(m.parameters()), GradFilterEMA())
    for opt in (guarded, filtered):
        assert isinstance(opt, OptimizerWrapper)
        assert phase_of(opt) is None
        assert observe(opt, 1, train_loss=1.0) == []
    assert guarded.watching  # a single-phase optimizer is guarded from the start


def test_switch_event_through_guard_and_filter_chain():
    m = _model()
    inner = GROKtimizer(
        m.parameters(), lr=0.05, weight_decay=1e-2, switch=AccuracySwitch(0.9, patience=2)
    )
    opt = Guard(inner)
    assert phase_of(opt) == 1 and not opt.watching
    assert observe(opt, 10, train_acc=0.95, train_loss=0.5) == []
    assert phase_of(opt) == 1
    events = observe(opt, 20, train_acc=0.95, train_loss=0.5)
    assert [e["event"] for e in events] == ["switch"]
    assert events[0]["step"] == 20 and not events[0].get("weights_changed")
    assert phase_of(opt) == 2 and opt.watching and inner.switch_step == 20
    assert opt.param_groups is inner.phase2.param_groups
    assert observe(opt, 30, train_acc=0.95, train_loss=0.5) == []  # nothing more happens


def test_phase_of_nested_biphasic_in_a_filter():
    m = _model()
    g = GROKtimizer(m.parameters(), lr=0.05, weight_decay=1e-2, switch=StepSwitch(3))
    opt = FilteredOptimizer(g, GradFilterEMA(alpha=0.5, lamb=0.1))
    assert phase_of(opt) == 1
    for t in range(3):
        _step(m, opt)
        events = observe(opt, t + 1)
    assert [e["event"] for e in events] == ["switch"] and phase_of(opt) == 2


def test_rollback_is_an_event_that_changed_the_weights():
    m = _model()
    opt = Guard(CDM(m.parameters(), lr=0.05, weight_decay=1e-2), rollback_ratio=2.0)
    loss0 = _step(m, opt)  # arms the guard (first snapshot)
    snap = [p.detach().clone() for p in m.parameters()]
    assert observe(opt, 1, train_loss=loss0) == []
    with torch.no_grad():
        for p in m.parameters():
            p.add_(10.0)  # ruin the weights
    events = observe(opt, 2, train_loss=math.inf)
    assert [e["event"] for e in events] == ["guard_rollback"]
    assert events[0]["weights_changed"] is True and events[0]["step"] == 2
    for p, s in zip(m.parameters(), snap, strict=True):
        assert torch.equal(p, s)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)


def test_guard_does_not_shadow_groktimizer_active():
    m = _model()
    inner = GROKtimizer(m.parameters(), lr=0.05, weight_decay=1e-2)
    opt = Guard(inner)
    assert opt.active is inner.phase1  # the phase optimizer, through the guard
    assert isinstance(opt.watching, bool)
