"""Guard: a too-large phase-2 step is caught (rolled back, η lowered, logged), not a NaN."""

import copy
import math

import pytest
import torch
from torch import nn

from groktimizer.cdm import CDM
from groktimizer.experiment import runio
from groktimizer.experiment.config import validate
from groktimizer.experiment.trainer import Trainer
from groktimizer.guard import Guard


def _regression(seed: int = 0):
    """Least squares with a known top curvature h_max = top eigenvalue of 2 XᵀX / n."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 10, generator=gen, dtype=torch.float64)
    y = torch.randn(40, generator=gen, dtype=torch.float64)
    h_max = float(torch.linalg.eigvalsh(2 * x.T @ x / 40)[-1])
    torch.manual_seed(seed)
    model = nn.Linear(10, 1, bias=False).double()

    def closure():
        model.zero_grad()
        loss = ((model(x).squeeze(-1) - y) ** 2).mean()
        loss.backward()
        return loss

    return model, closure, h_max


def _run(opt, closure, steps):
    losses = []
    for _ in range(steps):
        losses.append(float(opt.step(closure).detach()))
    return losses


def test_too_large_step_is_rolled_back_not_nan():
    model, closure, h_max = _regression()
    lr, wd = 8.0 / h_max, 1e-2  # heavy ball is stable only for lr * (h + wd) < 2 (1 + beta) < 4
    plain_model, plain_closure, _ = _regression()
    plain = _run(CDM(plain_model.parameters(), lr=lr, weight_decay=wd), plain_closure, 150)
    assert not all(math.isfinite(v) and v < 1e3 for v in plain)  # unguarded, it blows up

    start = float(closure().detach())
    opt = Guard(CDM(model.parameters(), lr=lr, weight_decay=wd), rollback_ratio=10.0)
    losses = _run(opt, closure, 150)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < start  # back under control and still descending
    events = opt.pop_events()
    rollbacks = [e for e in events if e["event"] == "guard_rollback"]
    assert rollbacks, events
    lrs = [e["lr"] for e in rollbacks]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == pytest.approx(lr * 0.5)
    final_lr = opt.param_groups[0]["lr"]
    assert final_lr == pytest.approx(lrs[-1])
    assert final_lr * (h_max + wd) < 4.0  # the step it settled on is inside the stability bound
    assert all(e["loss"] > 10 * 1e-2 or not math.isfinite(e["loss"]) for e in rollbacks)
    assert opt.pop_events() == []  # each event is reported once


def test_stable_step_is_left_alone():
    model, closure, h_max = _regression()
    opt = Guard(CDM(model.parameters(), lr=0.5 / h_max, weight_decay=1e-2))
    ref_model, ref_closure, _ = _regression()
    ref = CDM(ref_model.parameters(), lr=0.5 / h_max, weight_decay=1e-2)
    _run(opt, closure, 50)
    _run(ref, ref_closure, 50)
    assert opt.pop_events() == []
    assert torch.equal(model.weight, ref_model.weight)  # a silent guard changes nothing


def test_alignment_restart_speeds_up_an_underdamped_heavy_ball():
    def steps_to_converge(restart: bool) -> tuple[int, int]:
        w = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
        opt = Guard(CDM([w], lr=1.0, weight_decay=1e-4, momentum=0.95), restart_on_alignment=True)
        if not restart:
            opt.restart_on_alignment = False
        steps = 0
        while abs(float(w.detach())) >= 1e-6 and steps < 2000:
            opt.zero_grad()
            loss = 0.5 * 0.05 * (w**2).sum()  # curvature 0.05: β = 0.95 is under-damped
            loss.backward()
            opt.step()
            steps += 1
        return steps, sum(e["event"] == "guard_restart" for e in opt.pop_events())

    t_plain, n_plain = steps_to_converge(False)
    t_restart, n_restart = steps_to_converge(True)
    assert n_plain == 0 and n_restart > 0
    assert t_restart < 0.6 * t_plain


def test_state_dict_resumes_exactly_with_a_snapshot():
    def make():
        model, closure, h_max = _regression()
        return model, closure, Guard(CDM(model.parameters(), lr=8.0 / h_max, weight_decay=1e-2))

    model, closure, opt = make()
    _run(opt, closure, 12)
    assert opt.counts["rollbacks"] >= 1  # the state saved below carries a snapshot and lower η
    state = copy.deepcopy(opt.state_dict())  # torch state_dicts hold live tensors
    weights = model.weight.detach().clone()
    _run(opt, closure, 40)

    model2, closure2, opt2 = make()
    with torch.no_grad():
        model2.weight.copy_(weights)
    opt2.load_state_dict(state)
    _run(opt2, closure2, 40)
    assert torch.equal(model.weight, model2.weight)
    assert opt2.counts == opt.counts


def test_bad_arguments_fail_with_a_message():
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="lr_factor"):
        Guard(CDM(p, lr=0.1, weight_decay=1e-2), lr_factor=1.5)
    with pytest.raises(ValueError, match="rollback_ratio"):
        Guard(CDM(p, lr=0.1, weight_decay=1e-2), rollback_ratio=1.0)


def test_pipeline_guard_catches_too_large_phase2_step(compose, tmp_path):
    """Tiny modular MLP: CDM at η 1000 after the switch diverges; guarded, it is rolled back."""
    base = [
        "optimizer=cdm",
        "dataset.p=7",
        "dataset.train_fraction=0.6",
        "schedule.phase1.lr=1e-2",
        "schedule.switch.patience=1",
        "optimizer.lr=1000.0",
        "optimizer.weight_decay=1e-3",
        "trainer=smoke",
        "trainer.max_steps=120",
        "trainer.stop_at_target=false",
        "trainer.checkpoint_every=1000",
    ]
    (plain,) = Trainer(compose(*base), tmp_path / "plain").train()
    assert plain["t_switch"] is not None and plain["status"] == "diverged"

    cfg = compose(*base, "guard=on")
    validate(cfg)
    (res,) = Trainer(cfg, tmp_path / "guarded").train()
    assert res["status"] == "completed", res["message"]
    events = res["events"]
    assert events[0]["event"] == "switch"
    rollbacks = [e for e in events if e["event"] == "guard_rollback"]
    assert rollbacks and all(e["step"] > res["t_switch"] for e in rollbacks)
    rows = runio.MetricsLog(tmp_path / "guarded" / runio.METRICS).read()
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    assert rows[-1]["train_loss"] < 10 * max(rollbacks[0]["ref_loss"], 1e-2)
    assert rows[-1]["lr"] == pytest.approx(1000.0 * 0.5 ** len(rollbacks))


def test_guard_config_is_validated_by_its_constructor(compose, tmp_path):
    from groktimizer.experiment.builders import BuildError

    with pytest.raises(BuildError, match="guard .*lr_factor"):
        Trainer(compose("guard=on", "guard.lr_factor=2.0", "trainer=smoke"), tmp_path)
