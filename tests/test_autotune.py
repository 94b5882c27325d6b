"""The knob-free phase 2: step size at a fraction of the stability bound, decay that backs off."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from groktimizer import CDM, GROKtimizer, StepSwitch, critical_momentum, observe, phase_of
from groktimizer.autotune import (
    LOOSEN_AFTER,
    NOISY_SHARE,
    NOISY_STEP_GROWTH,
    NORM_FLAT,
    RAW_FRACTION,
    Phase2Tuner,
    stability_bound,
    stable_lr,
)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_stable_lr_sits_at_the_fraction_of_the_bound(nesterov, fraction):
    h, wd = 40.0, 0.5
    lr = stable_lr(h, wd, fraction, nesterov=nesterov)
    beta = critical_momentum(lr, wd, 1.0, nesterov)
    assert lr * (h + wd) == pytest.approx(fraction * stability_bound(beta, nesterov), rel=1e-9)


def _quadratic(eigs, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = len(eigs)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    H = q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T
    w = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)
    return H, w, (lambda: 0.5 * w @ H @ w)


def test_cdm_auto_step_and_decay_on_a_quadratic():
    """κ = ηλ fixed: β = β(κ) and η·h + κ = f·2(1 + β), measured h exact by Lanczos."""
    H, w, loss = _quadratic([30.0, 4.0, 1.0, 0.0, 0.0, 0.0])
    opt = GROKtimizer([w], phase2=CDM, switch=StepSwitch(0), lr_fraction=0.6, flat_rate=1e-3)
    events = observe(opt, 0, closure=loss)
    (ev,) = events
    rec = ev["auto_lr"]
    assert ev["event"] == "switch" and rec["h_max"] == pytest.approx(30.0, rel=1e-9)
    beta = critical_momentum(1.0, 1e-3)
    assert rec["lr"] * 30.0 + 1e-3 == pytest.approx(0.6 * stability_bound(beta), rel=1e-9)
    assert rec["lr"] * rec["weight_decay"] == pytest.approx(1e-3)
    assert opt.param_groups[0]["momentum_used"] == pytest.approx(beta)
    assert rec["hvps"] >= 1 and rec["preconditioned"] is False
    # CDM re-measures warm-started from it: the top eigenvector is kept (±, unit)
    top = torch.linalg.eigh(H).eigenvectors[:, -1].to(w.dtype)
    assert abs(float(opt.tuner.eigvec[0] @ top)) == pytest.approx(1.0, abs=1e-9)
    # it converges: the steep mode is inside the bound
    for _ in range(300):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss().detach()) < 1e-6


def test_adam_cdm_curvature_is_that_of_the_preconditioned_loss():
    """For AdamCDM the probe sees S H S, S = 1/√D: here D = diag(d) exactly (v̂ = d²)."""
    H, w, loss = _quadratic([9.0, 1.0, 0.5])
    d = torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64)
    tuner = Phase2Tuner(lr_fraction=0.5, step_cap=None)
    opt = GROKtimizer([w], switch=StepSwitch(0), tuner=tuner)
    st = opt.phase1.state[w]
    st["exp_avg_sq"], st["exp_avg"] = (d**2) * (1 - 0.98), torch.zeros_like(w)
    st["step"] = torch.tensor(1.0)
    observe(opt, 0, closure=loss)
    S = torch.diag(d.rsqrt())
    expected = float(torch.linalg.eigvalsh(S @ H @ S)[-1])
    assert opt.auto_lr_record["h_max"] == pytest.approx(expected, rel=1e-6)
    assert opt.auto_lr_record["preconditioned"] is True


def _capped(loosen, eigs=(2.0, 1.0, 0.5), **tuner_kw):
    """Default phase 2 (AdamCDML2) switched at step 0 on a quadratic whose Adam metric is the
    identity (v̂ = 1), the curvature bound far above the step cap."""
    H, w, loss = _quadratic(list(eigs))
    scale = [1.0]  # the closure's loss is scale · ½wᵀHw: the curvature can rise after the switch
    closure = lambda: scale[0] * loss()  # noqa: E731
    tuner = None if loosen is None else Phase2Tuner(loosen_cap=loosen, **tuner_kw)  # None: default
    opt = GROKtimizer([w], switch=StepSwitch(0), tuner=tuner)
    st = opt.phase1.state[w]
    st["exp_avg_sq"], st["exp_avg"] = torch.full_like(w, 1 - 0.98), torch.zeros_like(w)
    st["step"] = torch.tensor(1.0)
    (ev,) = observe(opt, 0, closure=closure, train_loss=float(closure().detach()), train_acc=1.0)
    return H, w, closure, scale, opt, ev["auto_lr"]


def _grad_at_cos(w, full, cos):
    other = torch.randn(len(w), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    other -= (other @ full) / (full @ full) * full  # orthogonal to the full gradient
    w.grad = cos * full / full.norm() + math.sqrt(1 - cos**2) * other / other.norm()


@pytest.mark.parametrize(
    "cos,loosen,rise",
    [
        (None, True, 1),
        (0.0, True, 1),
        (0.6, True, 1),
        (1.0, True, 1),
        (1.0, None, 1),
        (1.0, True, 4),
        (1.0, True, 0.25),
        (1.0, False, 1),
    ],
)
def test_step_cap_loosens_with_the_gradients_agreement(cos, loosen, rise):
    """At the switch η is the step cap whatever the gradient. With loosen_cap, LOOSEN_AFTER
    steps on, the cap loosens by 1/(1 − cos²), cos between the last step's gradient and the
    closure's, up to the bound (at the rule's fraction) at the switch's λ for the larger of the
    switch's curvature and the one measured then; no last gradient (or an orthogonal one) keeps
    the cap, and so does loosen_cap=False (on in the default, None here)."""
    H, w, closure, scale, opt, rec = _capped(loosen)
    assert rec["h_max"] == pytest.approx(2.0, rel=1e-6)
    beta = critical_momentum(1.0, 1e-3)
    cap = 3.0 * 1e-3 * (1 - beta)  # 3 x phase 1's Adam step x (1 - β(κ))
    assert rec["weight_decay"] == pytest.approx(1e-3 / cap)  # λ from the cap whatever η is
    assert rec["lr"] == pytest.approx(cap, rel=1e-6)  # the cap at the switch, cos or not
    early = observe(opt, LOOSEN_AFTER - 1, closure=closure, train_loss=float(closure().detach()))
    assert not early
    train_loss = float(closure().detach())  # the loss seen stays: only the curvature rises
    scale[0] = rise
    full = (rise * H @ w).detach()
    if cos is not None:
        _grad_at_cos(w, full, cos)
    events = observe(opt, LOOSEN_AFTER, closure=closure, train_loss=train_loss)
    factor = 1.0 if not cos or loosen is False else 1 / max(1 - cos**2, 1e-12)
    if loosen is False or cos is None or factor == 1.0:
        assert events == [] and opt.param_groups[0]["lr"] == pytest.approx(cap, rel=1e-6)
        return
    (ev,) = events
    assert ev["event"] == "auto_lr" and ev["reason"] == "loosen"
    assert ev["h_max"] == pytest.approx(2.0 * rise, rel=1e-6)
    h = 2.0 * max(rise, 1)  # the larger of the two measurements
    bound = stable_lr(h, rec["weight_decay"], 1.0)  # Adam's metric: the bound itself
    assert ev["lr"] == pytest.approx(max(cap, min(bound, cap * factor)), rel=1e-6)
    assert ev["noise_factor"] == pytest.approx(factor, rel=1e-6)
    assert opt.param_groups[0]["lr"] == ev["lr"] and ev["weight_decay"] == rec["weight_decay"]
    if cos == 1.0:  # at the bound: η·(h + λ) = B(β) with β from ηλ itself
        b = opt.param_groups[0]["momentum_used"]
        assert ev["lr"] * (h + ev["weight_decay"]) == pytest.approx(2 * (1 + b), 1e-6)
    assert not observe(opt, 2 * LOOSEN_AFTER, closure=closure, train_loss=train_loss)  # once
    # the first unsettled observation after (a loss that doubled) puts η back at the cap
    (ev,) = observe(opt, 3 * LOOSEN_AFTER, closure=closure, train_loss=3 * train_loss)
    assert ev["event"] == "auto_lr" and ev["reason"] == "tighten"
    assert opt.param_groups[0]["lr"] == pytest.approx(cap, rel=1e-6) == ev["lr"]
    assert not observe(opt, 4 * LOOSEN_AFTER, closure=closure, train_loss=9 * train_loss)


@pytest.mark.parametrize("unsettled", ["blow-up", "loss doubled", "accuracy short"])
def test_an_unsettled_phase_2_before_the_check_keeps_the_cap(unsettled):
    """A blow-up within LOOSEN_AFTER steps of the switch (a rollback), or an observation that is
    not calm (a loss that doubled, train accuracy below the switch's), cancels the loosening."""
    H, w, closure, scale, opt, rec = _capped(True)
    loss = float(closure().detach())
    if unsettled == "blow-up":
        (ev,) = observe(opt, 5, closure=closure, train_loss=float("inf"))
        assert ev["event"] == "lr_backoff"
        loss = float(closure().detach())
    elif unsettled == "loss doubled":
        assert not observe(opt, 5, closure=closure, train_loss=2.5 * loss)
    else:
        assert not observe(opt, 5, closure=closure, train_loss=loss, train_acc=0.5)
    lr = opt.param_groups[0]["lr"]
    assert lr <= rec["lr"]
    _grad_at_cos(w, (H @ w).detach(), 1.0)
    assert not observe(opt, LOOSEN_AFTER, closure=closure, train_loss=loss)
    assert opt.param_groups[0]["lr"] == lr


def test_a_back_off_after_the_loosening_starts_from_the_cap():
    """A blow-up at a loosened η rolls back and halves η from the cap (not from the loosened η)."""
    H, w, closure, scale, opt, rec = _capped(True)
    _grad_at_cos(w, (H @ w).detach(), 1.0)
    loss = float(closure().detach())
    (ev,) = observe(opt, LOOSEN_AFTER, closure=closure, train_loss=loss)
    assert ev["reason"] == "loosen" and ev["lr"] > 2 * rec["lr"]
    (ev,) = observe(opt, LOOSEN_AFTER + 10, closure=closure, train_loss=float("inf"))
    assert ev["event"] == "lr_backoff" and ev["lr_before"] > 2 * rec["lr"]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * rec["lr"], rel=1e-6)


@pytest.mark.parametrize(
    "cos,noise_decay",
    [(0.4, None), (-0.4, True), (0.2, None), (0.4, False), (0.7, None), (1.0, None)],
)
def test_first_decay_back_off_lowers_lambda_to_the_gradients_signal_share(cos, noise_decay):
    """Before phase 2's first step the tuner measures cos² between that step's gradient (a
    minibatch's) and the closure's at the same weights (a ``grad_noise`` event; none for a
    full-batch gradient, cos 1, nor with noise_decay=False; on by default, None here). λ stays;
    the first decay back-off sets κ := cos²·κ where cos² is under 1/3: λ := cos²·λ with η kept
    while the heavy ball's step grows at most NOISY_STEP_GROWTH times (1/|cos| 2.5 at cos 0.4),
    else (cos 0.2: 5x) η holds the step at that growth and λ = κ/η; later back-offs (or one
    where cos² is not under 1/3) cut λ 3x with η lowered to keep the step. (The trial of a
    larger step for a noisy gradient, noisy_step, is off here: tested below.)"""
    kw = {} if noise_decay is None else {"noise_decay": noise_decay}
    kw["noisy_step"] = False
    H, w, closure, scale, opt, rec = _capped(True, collapse_window=0, **kw)
    lam, lr = rec["weight_decay"], rec["lr"]
    _grad_at_cos(w, (H @ w).detach(), cos)
    opt.step()
    loss = float(closure().detach())
    events = observe(opt, 1, closure=closure, train_loss=loss, train_acc=1.0)
    measured = noise_decay is not False and abs(cos) < 1
    assert [e["event"] for e in events] == (["grad_noise"] if measured else [])
    if measured:
        assert events[0]["cos2"] == pytest.approx(cos**2, rel=1e-6) and events[0]["step"] == 0
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(lam)  # measured, not applied
    _grad_at_cos(w, (H @ w).detach(), cos)
    opt.step()  # once: no second measurement
    (ev,) = observe(opt, 2, closure=closure, train_loss=loss, train_acc=0.5)
    assert ev["event"] == "decay_backoff" and ev["weights_changed"]
    g = opt.param_groups[0]
    if measured and cos**2 < 1 / 3:
        _assert_cut_to_signal_share(ev, g, lr, lam, cos**2)
        lam2, lr2 = ev["weight_decay"], ev["lr"]
        (ev,) = observe(opt, 3, closure=closure, train_loss=loss, train_acc=0.5)
        assert ev["event"] == "decay_backoff"  # the second: the usual 3x (and η halved: no
        # good state came between)
        assert ev["weight_decay"] == pytest.approx(lam2 / 3, rel=1e-6) and ev["lr"] < lr2
    else:
        assert ev["weight_decay"] == pytest.approx(lam / 3, rel=1e-6) and ev["lr"] < lr


def _assert_cut_to_signal_share(ev, g, lr, lam, share):
    """κ := share·κ from (lr, lam): λ·share with η kept, unless the heavy ball's step would grow
    more than NOISY_STEP_GROWTH times; then η holds it there."""
    step = lr / (1 - critical_momentum(lr, lam))
    kept = lr / (1 - critical_momentum(lr, lam * share))
    assert ev["lr"] * ev["weight_decay"] == pytest.approx(lr * lam * share, rel=1e-6)
    assert ev["lr"] == g["lr"] and ev["weight_decay"] == g["weight_decay"]
    new_step = ev["lr"] / (1 - g["momentum_used"])
    if kept <= NOISY_STEP_GROWTH * step:
        assert ev["lr"] == pytest.approx(lr, rel=1e-9)  # η kept, β follows ηλ
        assert new_step == pytest.approx(kept, rel=1e-9)
    else:
        assert ev["lr"] < lr and new_step == pytest.approx(NOISY_STEP_GROWTH * step, rel=1e-6)
    assert g["momentum_used"] == pytest.approx(critical_momentum(1.0, lr * lam * share))


@pytest.mark.parametrize(
    "cos,noisy_step", [(0.4, None), (-0.5, True), (0.2, None), (0.8, None), (0.4, False)]
)
def test_a_noisy_gradient_tries_the_raw_fraction_of_the_bound_without_the_cap(cos, noisy_step):
    """Where phase 2's first gradient is mostly noise (cos² < NOISY_SHARE = 1/2) the default
    (None here) tries η at the raw metric's fraction of the bound (η·h + κ = ½·B(β(κ))), no step
    cap, λ = κ/η; the first back-off in the trial rolls the weights back and returns to the
    capped η and the switch's λ with κ cut to cos²·κ at once, as the capped run's first decay
    back-off would (lr_backoff, reason noisy_step); later decay back-offs cut λ 3x. cos² >= 1/2,
    or noisy_step=False: no trial."""
    kw = {} if noisy_step is None else {"noisy_step": noisy_step}
    H, w, closure, scale, opt, rec = _capped(True, collapse_window=10, **kw)
    cap, lam = rec["lr"], rec["weight_decay"]
    _grad_at_cos(w, (H @ w).detach(), cos)
    opt.step()
    loss = float(closure().detach())
    (ev,) = observe(opt, 1, closure=closure, train_loss=loss, train_acc=1.0)
    assert ev["event"] == "grad_noise" and ev["cos2"] == pytest.approx(cos**2, rel=1e-6)
    g = opt.param_groups[0]
    if cos**2 >= NOISY_SHARE or noisy_step is False:
        assert "noisy_step" not in ev and g["lr"] == pytest.approx(cap, rel=1e-9)
        assert g["weight_decay"] == pytest.approx(lam)
        return
    beta = critical_momentum(1.0, 1e-3)
    assert ev["noisy_step"] is True and ev["lr_capped"] == pytest.approx(cap, rel=1e-9)
    assert g["lr"] == ev["lr"] > 10 * cap  # the bound here is far above the cap
    assert ev["lr"] * 2.0 + 1e-3 == pytest.approx(RAW_FRACTION * stability_bound(beta), rel=1e-6)
    assert g["weight_decay"] == pytest.approx(1e-3 / ev["lr"], rel=1e-6) == ev["weight_decay"]
    assert g["momentum_used"] == pytest.approx(beta)
    w_good = w.detach().clone()  # step 1 kept the fit: the last good state
    for _ in range(3):
        _grad_at_cos(w, (H @ w).detach(), cos)
        opt.step()
    assert not torch.equal(w.detach(), w_good)
    (ev,) = observe(opt, 4, closure=closure, train_loss=float("inf"))  # a blow-up
    assert ev["event"] == "lr_backoff" and ev["reason"] == "noisy_step" and ev["weights_changed"]
    g = opt.param_groups[0]
    _assert_cut_to_signal_share(ev, g, cap, lam, cos**2)
    assert ev["lr_backoffs"] == 1 and ev["cause"] == "blow-up"
    assert torch.equal(w.detach(), w_good)
    assert all("momentum_buffer" not in st for st in opt.phase2.state.values())
    lr2, lam2 = ev["lr"], ev["weight_decay"]
    assert not observe(opt, 5, closure=closure, train_loss=loss, train_acc=0.5)  # a fall starts
    (ev,) = observe(opt, 15, closure=closure, train_loss=loss, train_acc=0.5)  # and lasts
    assert ev["event"] == "decay_backoff"  # the share was used: the usual 3x, η lowered
    assert ev["weight_decay"] == pytest.approx(lam2 / 3, rel=1e-6) and ev["lr"] < lr2


def test_a_noisy_trial_that_outlives_a_collapse_window_at_the_fit_stands():
    """At a good observation collapse_window steps after the switch the trial stands (auto_lr,
    reason noisy_step_kept): a later blow-up halves its η (λ kept), no return to the cap."""
    H, w, closure, scale, opt, rec = _capped(True, collapse_window=10)
    _grad_at_cos(w, (H @ w).detach(), 0.4)
    opt.step()
    loss = float(closure().detach())
    (ev,) = observe(opt, 1, closure=closure, train_loss=loss, train_acc=1.0)
    trial_lr, trial_wd = ev["lr"], ev["weight_decay"]
    assert ev["noisy_step"] is True and trial_lr > 10 * rec["lr"]
    assert not observe(opt, 9, closure=closure, train_loss=loss, train_acc=1.0)
    (ev,) = observe(opt, 10, closure=closure, train_loss=loss, train_acc=1.0)
    assert ev["event"] == "auto_lr" and ev["reason"] == "noisy_step_kept"
    assert ev["lr"] == trial_lr and ev["weight_decay"] == trial_wd
    (ev,) = observe(opt, 11, closure=closure, train_loss=float("inf"))
    assert ev["event"] == "lr_backoff" and ev["reason"] == "lr_backoff"
    assert ev["lr"] == pytest.approx(0.5 * trial_lr, rel=1e-6)
    assert ev["weight_decay"] == pytest.approx(trial_wd)


def test_no_noisy_trial_where_the_bound_sits_under_the_cap():
    """A curvature whose raw-fraction η is under the capped one keeps the capped run."""
    H, w, closure, scale, opt, rec = _capped(True, eigs=(5e4, 1.0, 0.5))
    assert rec["lr"] < 3e-3 * (1 - critical_momentum(1.0, 1e-3))  # the bound binds, not the cap
    _grad_at_cos(w, (H @ w).detach(), 0.3)
    opt.step()
    loss = float(closure().detach())
    (ev,) = observe(opt, 1, closure=closure, train_loss=loss, train_acc=1.0)
    assert ev["event"] == "grad_noise" and ev["noisy_step"] is False
    assert opt.param_groups[0]["lr"] == pytest.approx(rec["lr"], rel=1e-9)


def test_noisy_step_is_checked():
    with pytest.raises(ValueError, match="noisy_step must be a bool, got 1"):
        Phase2Tuner(noisy_step=1)


def test_noise_decay_is_checked():
    with pytest.raises(ValueError, match="noise_decay must be a bool, got 'yes'"):
        Phase2Tuner(noise_decay="yes")


def _fit(seed=0):
    torch.manual_seed(seed)
    x = torch.randn(64, 5)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2))
    return model, x, y


def _guarded(collapse_window, switch_at=0):
    """A model and a GROKtimizer with explicit η 1e-3 and λ 3, guarded by the tuner."""
    model, _, _ = _fit()
    opt = GROKtimizer(model.parameters(), lr=1e-3, weight_decay=3.0, switch=StepSwitch(switch_at))
    opt.tuner = Phase2Tuner(lr_auto=False, weight_decay_auto=False, collapse_window=collapse_window)
    return model, opt


@torch.no_grad()
def _scale(model, factor):
    """Scale every weight in place (decay winning: < 1; a noisy step: > 1); return copies."""
    for p in model.parameters():
        p.mul_(factor)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("target", ["fixed_point", "rate"])
def test_decay_wins_is_rolled_back_and_lambda_lowered(target):
    model, x, y = _fit()
    opt = GROKtimizer(model.parameters(), lr=1e-3, weight_decay=3.0, switch=StepSwitch(0))
    # explicit η, λ, guarded; a fall of train accuracy that lasts 10 steps is a collapse
    opt.tuner = Phase2Tuner(
        lr_auto=False, weight_decay_auto=False, collapse_window=10, backoff_target=target
    )
    assert observe(opt, 0, train_acc=1.0, train_loss=0.01, weight_norm=5.0)[0]["event"] == "switch"
    good = [p.detach().clone() for p in model.parameters()]
    assert observe(opt, 10, train_acc=1.0, train_loss=0.02, weight_norm=4.9) == []
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.1)  # what decay winning looks like: the norm falls, the fit goes
    assert observe(opt, 20, train_acc=0.85, train_loss=0.5, weight_norm=0.5) == []  # one dip
    events = observe(opt, 30, train_acc=0.8, train_loss=0.7, weight_norm=0.4)
    (ev,) = events
    assert ev["event"] == "decay_backoff" and ev["weights_changed"] is True
    g = opt.param_groups[0]
    assert ev["cause"] == "accuracy"
    if target == "rate":  # κ = ηλ falls 3x, η with 1 − β
        ratio = (1 - critical_momentum(1.0, 1e-3)) / (1 - critical_momentum(1.0, 3e-3))
        assert g["lr"] == pytest.approx(1e-3 * ratio)
        assert g["lr"] * g["weight_decay"] == pytest.approx(1e-3)
    else:  # λ (the fixed point's strength) falls 3x; η is lowered with it
        assert g["weight_decay"] == pytest.approx(1.0) and g["lr"] < 1e-3
    # either way the heavy ball's step η/(1 − β) is kept
    assert g["lr"] / (1 - g["momentum_used"]) == pytest.approx(
        1e-3 / (1 - critical_momentum(1e-3, 3.0))
    )
    for p, g in zip(model.parameters(), good, strict=True):
        assert torch.equal(p, g)  # back at the last good state
    assert all("momentum_buffer" not in s for s in opt.state.values())


def _switched(switch_norm, **tuner_kw):
    """Phase 1 (AdamW) for 50 steps, the switch at ``switch_norm``, one phase-2 step. Return
    (model, opt, closure)."""
    model, x, y = _fit()

    def closure():
        return F.cross_entropy(model(x), y)

    opt = GROKtimizer(model.parameters(), lr=1e-3, weight_decay=30.0, switch=StepSwitch(50))
    kw = dict(lr_auto=False, weight_decay_auto=False, collapse_window=10, stay_cuts=0)
    opt.tuner = Phase2Tuner(**{**kw, **tuner_kw})
    for step in range(1, 52):  # the switch at 50, then phase 2's first step measures s
        opt.zero_grad()
        closure().backward()
        opt.step()
        if step == 50:
            assert observe(opt, step, train_acc=1.0, train_loss=0.5, weight_norm=switch_norm)
    return model, opt, closure


def _good_then_fall(model, opt, closure, start, good_norm, fallen_norms):
    """A good observation at ``good_norm`` (step ``start``), then the weights shrink 10x and the
    fit goes for a window (observed at ``fallen_norms``). Return the decay back-off event."""
    loss = closure().item()
    assert observe(opt, start, train_acc=1.0, train_loss=loss, weight_norm=good_norm) == []
    good = [p.detach().clone() for p in model.parameters()]
    _scale(model, 0.1)
    wn1, wn2 = fallen_norms
    kw = dict(closure=closure)
    assert observe(opt, start + 10, train_acc=0.85, train_loss=0.5, weight_norm=wn1, **kw) == []
    (ev,) = observe(opt, start + 20, train_acc=0.8, train_loss=0.7, weight_norm=wn2, **kw)
    assert ev["event"] == "decay_backoff" and ev["cause"] == "accuracy"
    for p, g in zip(model.parameters(), good, strict=True):
        assert torch.equal(p, g)  # rolled back
    return ev


def _decay_wins_after_shrinking(switch_norm, snapshot_norm, **tuner_kw):
    """The switch at ``switch_norm``, a good observation at ``snapshot_norm``, then the fit goes
    for a window. Return (model, opt, closure, the decay back-off event)."""
    model, opt, closure = _switched(switch_norm, **tuner_kw)
    ev = _good_then_fall(model, opt, closure, 60, snapshot_norm, (0.9, 0.8))
    return model, opt, closure, ev


def test_decay_winning_after_the_norm_shrank_3x_holds_the_rolled_back_norm():
    model, opt, closure, ev = _decay_wins_after_shrinking(switch_norm=30.0, snapshot_norm=9.0)
    # λ: the ℓ2 strength at which the rolled-back weights are radially stationary,
    # g + λ·s·w = 0 along w (s: AdamCDML2's metric scale, λ in its units), computed here
    params = list(model.parameters())
    grads = torch.autograd.grad(closure(), params)
    s = opt.phase2.param_groups[0]["metric_scale"]
    pull = -sum(float((g * p.detach()).sum()) for g, p in zip(grads, params, strict=True))
    spread = s * sum(float(p.detach().pow(2).sum()) for p in params)
    hold = pull / spread
    assert 30.0 / 81 < hold < 30.0 / 3  # between the floor and the usual cut: the rule binds
    group = opt.param_groups[0]
    assert group["weight_decay"] == pytest.approx(hold, rel=1e-5)  # float32 sums in the rule
    assert ev["weight_decay"] == pytest.approx(hold, rel=1e-5) and ev["held_norm"] == 9.0
    # the heavy ball's step η/(1 − β) is kept, as at any decay back-off
    assert group["lr"] / (1 - group["momentum_used"]) == pytest.approx(
        1e-3 / (1 - critical_momentum(1e-3, 30.0))
    )


@pytest.mark.parametrize(
    "snapshot_norm, tuner_kw",
    [(11.0, {}), (25.0, {}), (9.0, {"hold_shrink": None}), (9.0, {"hold_shrink": 4.0})],
)
def test_decay_winning_before_the_norm_shrank_enough_cuts_lambda_3x(snapshot_norm, tuner_kw):
    _, opt, _, ev = _decay_wins_after_shrinking(30.0, snapshot_norm, **tuner_kw)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(10.0)
    assert "held_norm" not in ev


def test_a_later_decay_rollback_does_not_hold_even_after_the_norm_shrank_3x():
    """The hold is for the first time the decay takes the fit: where it took it before, from a
    state at the switch's norm (a memorising fit), a later state 3x down is cut by λ/3."""
    model, opt, closure = _switched(30.0)
    for start, norm, wd in [(60, 30.0, 10.0), (90, 9.0, 10.0 / 3)]:
        ev = _good_then_fall(model, opt, closure, start, norm, (norm / 10, norm / 20))
        assert "held_norm" not in ev
        assert opt.param_groups[0]["weight_decay"] == pytest.approx(wd)


def _at_fit(opt, closure, steps, norms):
    """Observations at the fit (train accuracy 1) at ``steps`` with weight norms ``norms``;
    return every event."""
    loss = closure().item()
    events = []
    for step, wn in zip(steps, norms, strict=True):
        events += observe(opt, step, train_acc=1.0, train_loss=loss, weight_norm=wn)
    return events


def test_a_stay_at_the_fit_at_a_flat_norm_cuts_an_automatic_lambda_in_place_stay_cuts_times():
    model, opt, closure = _switched(30.0, weight_decay_auto=True, stay_cuts=2, collapse_window=20)
    group = opt.param_groups[0]
    wd0, lr0 = group["weight_decay"], group["lr"]
    kept = [p.detach().clone() for p in model.parameters()]
    # a norm still falling by more than NORM_FLAT per evaluation: the decay is travelling
    norms = [9.0 * (1 - 1.5 * NORM_FLAT) ** k for k in range(5)]
    assert _at_fit(opt, closure, range(60, 110, 10), norms) == []
    # flat (within NORM_FLAT of where the stay began at 100) for a window: λ/3, η and weights kept
    flat = norms[-1] * (1 - NORM_FLAT / 2)
    (ev,) = _at_fit(opt, closure, (110, 120), (flat, flat))
    assert ev["step"] == 120 and ev["event"] == "decay_backoff" and ev["reason"] == "fit_stay"
    assert ev["weights_changed"] is False and ev["weight_decay_before"] == wd0
    assert group["weight_decay"] == pytest.approx(wd0 / 3) and group["lr"] == lr0
    assert group["momentum_used"] == pytest.approx(critical_momentum(lr0, wd0 / 3))
    for p, k in zip(model.parameters(), kept, strict=True):
        assert torch.equal(p, k)
    # a new stay: one more cut after another window, then no more (stay_cuts=2)
    (ev,) = _at_fit(opt, closure, (130, 140), (flat, flat))
    assert ev["step"] == 140 and group["weight_decay"] == pytest.approx(wd0 / 9)
    assert _at_fit(opt, closure, range(150, 300, 10), [flat] * 15) == []
    assert group["weight_decay"] == pytest.approx(wd0 / 9)


@pytest.mark.parametrize(
    "tuner_kw", [{"weight_decay_auto": False}, {"weight_decay_auto": True, "stay_cuts": 0}]
)
def test_an_explicit_lambda_or_stay_cuts_0_is_not_cut_at_a_stay_at_the_fit(tuner_kw):
    _, opt, closure = _switched(30.0, **{"stay_cuts": 3, **tuner_kw})
    wd0 = opt.param_groups[0]["weight_decay"]
    assert _at_fit(opt, closure, range(60, 200, 10), [9.0] * 14) == []
    assert opt.param_groups[0]["weight_decay"] == wd0


def test_no_stay_cut_after_a_hold():
    """The hold set λ at the measured balance of the lowest-norm state that kept the fit. λ
    automatic (κ/η = 30 here, as the explicit λ of the hold tests), so only the gate stops the
    cut."""
    kw = dict(stay_cuts=3, weight_decay_auto=True, flat_rate=0.03)
    _, opt, closure, ev = _decay_wins_after_shrinking(30.0, 9.0, **kw)
    assert "held_norm" in ev and opt.tuner.weight_decay_auto
    held = opt.param_groups[0]["weight_decay"]
    assert _at_fit(opt, closure, range(90, 300, 10), [9.0] * 21) == []
    assert opt.param_groups[0]["weight_decay"] == held


def test_stay_cuts_is_checked():
    with pytest.raises(ValueError, match=r"stay_cuts must be an int >= 0, got -1"):
        Phase2Tuner(stay_cuts=-1)


def test_hold_shrink_is_checked():
    with pytest.raises(ValueError, match=r"hold_shrink must be None or a float > 1, got 0.5"):
        Phase2Tuner(hold_shrink=0.5)


def test_a_fall_to_chance_rolls_back_at_once_a_dip_waits_the_window():
    """The window lets a dip recover; a fall to within 10% of the first evaluation's accuracy
    (the fit gone, as decay winning in minibatches looks) is rolled back at the next look."""
    model, x, y = _fit()
    opt = GROKtimizer(model.parameters(), lr=1e-3, weight_decay=3.0, switch=StepSwitch(10))
    opt.tuner = Phase2Tuner(lr_auto=False, weight_decay_auto=False, collapse_window=300)
    assert observe(opt, 0, train_acc=0.5, train_loss=0.7, weight_norm=5.0) == []  # chance
    assert observe(opt, 10, train_acc=1.0, train_loss=0.01, weight_norm=5.0)[0]["event"] == "switch"
    good = [p.detach().clone() for p in model.parameters()]
    # a dip to 60% (more than acc_drop, far from chance) waits the window
    assert observe(opt, 20, train_acc=0.6, train_loss=0.6, weight_norm=4.0) == []
    assert observe(opt, 30, train_acc=0.56, train_loss=0.65, weight_norm=3.5) == []
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.1)
    # 0.54 <= 0.5 + 0.1 * (1.0 - 0.5): the fit is gone, 20 steps into a 300-step window
    (ev,) = observe(opt, 40, train_acc=0.54, train_loss=0.69, weight_norm=0.5)
    assert ev["event"] == "decay_backoff" and ev["cause"] == "accuracy"
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1.0)
    for p, g in zip(model.parameters(), good, strict=True):
        assert torch.equal(p, g)
    assert opt.tuner.state_dict()["first_acc"] == 0.5


def test_a_fall_still_recovering_at_the_window_keeps_its_weights_a_stalled_one_rolls_back():
    """A fall that lasts the window lowers λ; while its train loss still comes down (10% over a
    third of the window) the weights are kept (the fit is being rebuilt at a lower norm), and
    a new window starts; once the loss stalls past it, the rollback follows. (The norm still
    falls here: at a steady norm the fall is held instead, tested below.)"""
    model, opt = _guarded(collapse_window=30)
    assert observe(opt, 0, train_acc=1.0, train_loss=0.01, weight_norm=5.0)[0]["event"] == "switch"
    assert observe(opt, 5, train_acc=1.0, train_loss=0.02, weight_norm=4.9) == []  # good state
    good = [p.detach().clone() for p in model.parameters()]
    fallen = _scale(model, 0.5)
    for step, acc, loss, wn in [(10, 0.60, 2.0, 2.8), (20, 0.58, 2.5, 2.7), (30, 0.62, 2.2, 2.6)]:
        assert observe(opt, step, train_acc=acc, train_loss=loss, weight_norm=wn) == [], step
    # the window is over at 40; the loss fell 2.2 -> 1.8 (< 0.9 x 2.2) since step 30, the norm
    # 2.6 -> 2.5 (more than NORM_FLAT)
    (ev,) = observe(opt, 40, train_acc=0.66, train_loss=1.8, weight_norm=2.5)
    assert ev["event"] == "decay_backoff" and ev["weights_changed"] is False
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1.0)
    for p, f in zip(model.parameters(), fallen, strict=True):
        assert torch.equal(p, f)  # kept
    for step, loss in [(50, 1.5), (60, 1.45)]:  # inside the new window
        assert observe(opt, step, train_acc=0.7, train_loss=loss, weight_norm=2.5) == [], step
    assert opt.tuner.state_dict()["drop_losses"] == [(50, 1.5), (60, 1.45)]
    # 70: the new window is over and 1.44 > 0.9 x 1.45: stalled, rolled back, λ cut again
    (ev,) = observe(opt, 70, train_acc=0.70, train_loss=1.44, weight_norm=2.5)
    assert ev["event"] == "decay_backoff" and ev["weights_changed"] is True
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1 / 3)
    for p, g in zip(model.parameters(), good, strict=True):
        assert torch.equal(p, g)
    assert opt.tuner.state_dict()["drop_losses"] == []  # cleared with the rollback


@pytest.mark.parametrize("norm_then", [2.5, 2.5 / (1 - 0.5 * NORM_FLAT), 2.4])
def test_a_recovering_fall_at_a_steady_norm_is_held(norm_then):
    """A fall that lasts the window with its loss still coming down and its weight norm within
    NORM_FLAT of where it was a third of the window before (or above it): the decay no longer
    shrinks the weights and the fit is coming back at the lower norm, so nothing changes (event
    decay_hold, weights, η and λ kept) and a new window starts; a stall there lowers λ in place
    (weights kept: a fit rebuilt at a lower norm), where a fall never held rolls back."""
    model, opt = _guarded(collapse_window=30)
    assert observe(opt, 0, train_acc=1.0, train_loss=0.01, weight_norm=5.0)[0]["event"] == "switch"
    assert observe(opt, 5, train_acc=1.0, train_loss=0.02, weight_norm=4.9) == []  # good state
    g = opt.param_groups[0]
    lr, lam = g["lr"], g["weight_decay"]
    fallen = _scale(model, 0.5)
    for step, acc, loss, wn in [
        (10, 0.60, 2.0, 2.8),
        (20, 0.58, 2.5, 2.6),
        (30, 0.62, 2.2, norm_then),
    ]:
        assert observe(opt, step, train_acc=acc, train_loss=loss, weight_norm=wn) == [], step
    (ev,) = observe(opt, 40, train_acc=0.66, train_loss=1.8, weight_norm=2.5)
    assert ev["event"] == "decay_hold" and ev["reason"] == "steady_fall"
    assert ev["cause"] == "accuracy, recovering at a steady norm (weights, η and λ kept)"
    assert g["lr"] == lr and g["weight_decay"] == lam == ev["weight_decay"]
    assert ev["decay_backoffs"] == 0 and ev["lr_backoffs"] == 0
    for p, f in zip(model.parameters(), fallen, strict=True):
        assert torch.equal(p, f)  # kept
    for step, loss in [(50, 1.5), (60, 1.45)]:  # inside the new window
        assert observe(opt, step, train_acc=0.7, train_loss=loss, weight_norm=2.5) == [], step
    (ev,) = observe(opt, 70, train_acc=0.70, train_loss=1.44, weight_norm=2.5)  # stalled
    assert ev["event"] == "decay_backoff" and ev["weights_changed"] is False
    assert ev["cause"] == "accuracy, stalled after a hold (weights kept)"
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(lam / 3)
    for p, f in zip(model.parameters(), fallen, strict=True):
        assert torch.equal(p, f)
    # back at the fit, the hold is forgotten: the next fall that stalls rolls back
    assert observe(opt, 80, train_acc=1.0, train_loss=0.05, weight_norm=2.5) == []  # good
    good = [p.detach().clone() for p in model.parameters()]
    _scale(model, 0.5)
    for step in (90, 100, 110):
        assert observe(opt, step, train_acc=0.6, train_loss=2.0, weight_norm=1.2) == [], step
    (ev,) = observe(opt, 120, train_acc=0.6, train_loss=2.0, weight_norm=1.2)
    assert ev["event"] == "decay_backoff" and ev["weights_changed"] is True
    for p, q in zip(model.parameters(), good, strict=True):
        assert torch.equal(p, q)


def test_a_loop_that_passes_no_weight_norm_gets_the_parameters_own():
    """The README's loop passes no weight_norm: GROKtimizer hands the tuner the 2-norm of its
    parameters (the pipeline's weight_norm), so the rules that read the norm act there too: the
    recovering fall at a steady norm above is held, not cut (before, a user's loop never held
    one: the norm was unknown, so never steady)."""
    model, opt = _guarded(collapse_window=30)
    assert observe(opt, 0, train_acc=1.0, train_loss=0.01)[0]["event"] == "switch"
    assert observe(opt, 5, train_acc=1.0, train_loss=0.02) == []
    _scale(model, 0.5)
    for step, acc, loss in [(10, 0.60, 2.0), (20, 0.58, 2.5), (30, 0.62, 2.2)]:
        assert observe(opt, step, train_acc=acc, train_loss=loss) == [], step
    (ev,) = observe(opt, 40, train_acc=0.66, train_loss=1.8)
    assert ev["event"] == "decay_hold"
    norm = torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters()))
    assert ev["weight_norm"] == pytest.approx(float(norm), rel=1e-6)


def test_a_recovering_fall_with_the_norm_still_falling_is_not_held():
    """The same fall with the norm down by more than NORM_FLAT over the last third of the
    window: the decay still wins, λ is lowered in place (decay_backoff, weights kept)."""
    model, opt = _guarded(collapse_window=30)
    observe(opt, 0, train_acc=1.0, train_loss=0.01, weight_norm=5.0)
    observe(opt, 5, train_acc=1.0, train_loss=0.02, weight_norm=4.9)
    _scale(model, 0.5)
    for step, acc, loss in [(10, 0.60, 2.0), (20, 0.58, 2.5), (30, 0.62, 2.2)]:
        assert observe(opt, step, train_acc=acc, train_loss=loss, weight_norm=2.5) == [], step
    wn = 2.5 * (1 - 2 * NORM_FLAT)
    (ev,) = observe(opt, 40, train_acc=0.66, train_loss=1.8, weight_norm=wn)
    assert ev["event"] == "decay_backoff" and ev["weights_changed"] is False
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1.0)


def test_a_fall_with_the_norm_risen_cuts_the_step_not_the_decay():
    """Decay winning shrinks the weights; a fall of train accuracy whose weight norm rose since
    the last good state (here the switch's, whose norm the snapshot keeps) is the step's doing
    (minibatch noise): rolled back with η halved and λ doubled (κ = ηλ kept), not λ cut."""
    model, opt = _guarded(collapse_window=300, switch_at=10)
    assert observe(opt, 0, train_acc=0.5, train_loss=0.7, weight_norm=5.0) == []  # chance
    assert observe(opt, 10, train_acc=1.0, train_loss=0.01, weight_norm=5.0)[0]["event"] == "switch"
    good = [p.detach().clone() for p in model.parameters()]
    _scale(model, 2.0)  # what a noisy step looks like: the fit goes, the norm grows
    (ev,) = observe(opt, 20, train_acc=0.52, train_loss=0.69, weight_norm=10.0)
    assert ev["event"] == "lr_backoff" and ev["cause"] == "accuracy, norm risen"
    assert ev["weights_changed"] is True
    g = opt.param_groups[0]
    assert g["lr"] == pytest.approx(0.5e-3) and g["weight_decay"] == pytest.approx(6.0)
    for p, q in zip(model.parameters(), good, strict=True):
        assert torch.equal(p, q)
    assert all("momentum_buffer" not in st for st in opt.state.values())
    # the same fall with the norm fallen is decay winning: λ / 3
    _scale(model, 0.1)
    (ev,) = observe(opt, 30, train_acc=0.52, train_loss=0.69, weight_norm=0.5)
    assert ev["event"] == "decay_backoff"
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(2.0)


def _assert_step_halved_in_place(ev, opt, model, kept, what):
    assert ev["event"] == "lr_backoff" and ev["weights_changed"] is False
    assert ev["cause"] == f"{what}, norm risen (weights kept)"
    g = opt.param_groups[0]
    # η halved, λ doubled: κ = ηλ (the flat mode's pace) and β kept
    assert g["lr"] == pytest.approx(0.5e-3) and g["weight_decay"] == pytest.approx(6.0)
    for p, k in zip(model.parameters(), kept, strict=True):
        assert torch.equal(p, k)


def test_a_recovering_fall_with_the_norm_risen_halves_the_step_in_place():
    """A fall still recovering at the window's end keeps its weights either way; with the norm
    above the last good state's, η is halved (λ doubled: κ kept) instead of λ cut, and a new window
    starts."""
    model, opt = _guarded(collapse_window=30)
    assert observe(opt, 0, train_acc=1.0, train_loss=0.01, weight_norm=5.0)[0]["event"] == "switch"
    assert observe(opt, 5, train_acc=1.0, train_loss=0.02, weight_norm=4.9) == []  # good state
    risen = _scale(model, 2.0)
    # losses under 10x the good state's (a larger one with the norm up is a blow-up)
    for step, acc, loss in [(10, 0.60, 0.15), (20, 0.58, 0.18), (30, 0.62, 0.16)]:
        assert observe(opt, step, train_acc=acc, train_loss=loss, weight_norm=9.8) == [], step
    (ev,) = observe(opt, 40, train_acc=0.66, train_loss=0.13, weight_norm=9.8)  # still falling
    _assert_step_halved_in_place(ev, opt, model, risen, "accuracy, recovering")
    assert opt.tuner.state_dict()["dropped_since"] == 40  # a new window from here


@pytest.mark.parametrize("tolerance", [0.005, None])
def test_a_run_settled_short_of_the_fit_lowers_lambda_in_place(tolerance):
    """Train accuracy within acc_drop of the switch's but short of it by more than
    fit_tolerance, its loss no longer falling, for a window: λ lowered in place, a new window;
    short by less, or still improving, or fit_tolerance=None: nothing."""
    model, x, y = _fit()
    opt = GROKtimizer(model.parameters(), lr=1e-3, weight_decay=3.0, switch=StepSwitch(0))
    opt.tuner = Phase2Tuner(
        lr_auto=False, weight_decay_auto=False, collapse_window=30, fit_tolerance=tolerance
    )
    assert observe(opt, 0, train_acc=1.0, train_loss=0.01, weight_norm=5.0)[0]["event"] == "switch"
    # 0.996 is within the tolerance: never counts, however long it lasts
    for step in range(10, 60, 10):
        assert observe(opt, step, train_acc=0.996, train_loss=0.02, weight_norm=4.0) == []
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    kept = [p.detach().clone() for p in model.parameters()]
    # 0.975 for a window, but its loss falls 10% a third of a window: still coming
    for step, loss in [(60, 0.05), (70, 0.04), (80, 0.03), (90, 0.02)]:
        assert observe(opt, step, train_acc=0.975, train_loss=loss, weight_norm=3.0) == []
    events = observe(opt, 100, train_acc=0.975, train_loss=0.0199, weight_norm=3.0)  # stalled
    if tolerance is None:
        assert events == [] and opt.param_groups[0]["weight_decay"] == 3.0
        return
    (ev,) = events
    assert ev["event"] == "decay_backoff" and ev["weights_changed"] is False
    assert ev["cause"] == "settled short of the fit (weights kept)"
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1.0)
    for p, k in zip(model.parameters(), kept, strict=True):
        assert torch.equal(p, k)
    # a new window: nothing until it is over, then λ again
    for step in (110, 120):
        assert observe(opt, step, train_acc=0.975, train_loss=0.0199, weight_norm=3.0) == []
    (ev,) = observe(opt, 130, train_acc=0.975, train_loss=0.0199, weight_norm=3.0)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1 / 3)
    # back at the fit: the stay ends
    assert observe(opt, 140, train_acc=1.0, train_loss=0.01, weight_norm=3.0) == []
    assert opt.tuner.state_dict()["short_since"] is None


def test_a_stay_short_of_the_fit_with_the_norm_risen_halves_the_step_once():
    """A stay short of the fit whose weight norm rose since it began is the step's noise floor,
    not λ's fixed point: η halved, λ doubled (κ kept), weights kept, a new window; settled
    short again before the run is back at the fit, λ is cut (a fixed point approached from
    below is λ's); back at the fit, the next risen stay halves η again."""
    model, opt = _guarded(collapse_window=30)
    assert observe(opt, 0, train_acc=1.0, train_loss=0.01, weight_norm=5.0)[0]["event"] == "switch"
    kept = [p.detach().clone() for p in model.parameters()]

    def stay(first, last, norm0):  # short from ``first``, the window over at ``last``
        for k, step in enumerate(range(first, last, 10)):
            got = observe(opt, step, train_acc=0.975, train_loss=0.02, weight_norm=norm0 + k)
            assert got == [], step
        return observe(opt, last, train_acc=0.975, train_loss=0.02, weight_norm=norm0 + 3)

    (ev,) = stay(10, 40, 5.0)  # the norm 5 -> 8 over the stay
    _assert_step_halved_in_place(ev, opt, model, kept, "settled short of the fit")
    g = opt.param_groups[0]
    (ev,) = stay(50, 70, 8.0)  # a new window from 40, short again, not at the fit since: λ
    assert ev["event"] == "decay_backoff" and g["weight_decay"] == pytest.approx(2.0)
    assert observe(opt, 80, train_acc=1.0, train_loss=0.01, weight_norm=11.0) == []  # the fit
    (ev,) = stay(90, 120, 11.0)
    assert ev["event"] == "lr_backoff" and g["weight_decay"] == pytest.approx(4.0)


@pytest.mark.parametrize("norm_fell", [False, True])
@pytest.mark.parametrize("cos", [0.4, 0.8])
def test_a_stay_short_of_the_fit_in_a_noisy_run_halves_the_step_first(cos, norm_fell):
    """Where phase 2's first gradient was mostly noise (cos² < NOISY_SHARE) a stay short of the
    fit with its norm flat (down by NORM_FLAT at most) may be the step's noise floor: η halved
    first (κ = ηλ kept); with the norm down by more over the stay the decay is winning, and with
    a gradient that is mostly signal the stay is λ's fixed point either way: λ cut."""
    # no loosening at +20 (the closure given at step 1 serves the later observations too)
    H, w, closure, scale, opt, rec = _capped(False, collapse_window=30, noisy_step=False)
    lam, lr = rec["weight_decay"], rec["lr"]
    _grad_at_cos(w, (H @ w).detach(), cos)
    opt.step()
    loss = float(closure().detach())
    (ev,) = observe(opt, 1, closure=closure, train_loss=loss, train_acc=1.0)
    assert ev["event"] == "grad_noise" and (ev["cos2"] < NOISY_SHARE) == (cos**2 < NOISY_SHARE)
    share = ev["cos2"]  # the first decay back-off goes to λ·cos² where that is under λ/3
    # short by 2.5 points, loss flat; the norm down 7.5% over the stay, or under NORM_FLAT
    norms = [4.0, 3.9, 3.8, 3.7] if norm_fell else [4.0, 4.0, 3.99, 4.0 * (1 - NORM_FLAT) + 1e-3]
    for step, norm in zip((10, 20, 30), norms[:-1], strict=True):
        assert observe(opt, step, train_loss=loss, train_acc=0.975, weight_norm=norm) == []
    (ev,) = observe(opt, 40, train_loss=loss, train_acc=0.975, weight_norm=norms[-1])
    g = opt.param_groups[0]
    if cos**2 < NOISY_SHARE and not norm_fell:
        assert ev["event"] == "lr_backoff"
        assert ev["cause"] == "settled short of the fit, noisy gradient (weights kept)"
        assert g["lr"] == pytest.approx(lr / 2) and g["weight_decay"] == pytest.approx(2 * lam)
    else:
        assert ev["event"] == "decay_backoff"
        assert ev["cause"] == "settled short of the fit (weights kept)"
        assert g["weight_decay"] == pytest.approx(lam * min(share, 1 / 3))


def test_a_rollback_ends_a_stay_short_of_the_fit():
    """The stay is counted on the weights it was seen on: a rollback (a blow-up here) starts it
    anew, so no cut comes one look after the rollback."""
    model, x, y = _fit()
    opt = GROKtimizer(model.parameters(), lr=1e-3, weight_decay=3.0, switch=StepSwitch(0))
    opt.tuner = Phase2Tuner(lr_auto=False, weight_decay_auto=False, collapse_window=30)
    assert observe(opt, 0, train_acc=1.0, train_loss=0.01, weight_norm=5.0)[0]["event"] == "switch"
    for step in (10, 20):
        assert observe(opt, step, train_acc=0.975, train_loss=0.02, weight_norm=4.0) == []
    (ev,) = observe(opt, 30, train_acc=0.975, train_loss=math.nan, weight_norm=4.0)
    assert ev["event"] == "lr_backoff" and opt.tuner.state_dict()["short_since"] is None
    assert observe(opt, 40, train_acc=0.975, train_loss=0.02, weight_norm=4.0) == []
    assert opt.tuner.state_dict()["short_since"] == 40


def test_fit_tolerance_is_checked():
    with pytest.raises(ValueError, match="fit_tolerance must be None or in"):
        Phase2Tuner(fit_tolerance=1.5)


def test_non_finite_loss_rolls_back_and_cuts_the_step():
    model, x, y = _fit()
    opt = GROKtimizer(model.parameters(), lr=1e-3, weight_decay=1.0, switch=StepSwitch(0))
    opt.tuner = Phase2Tuner(lr_auto=False, weight_decay_auto=False)
    observe(opt, 0, train_acc=1.0, train_loss=0.01, weight_norm=5.0)
    events = observe(opt, 10, train_acc=0.5, train_loss=math.nan, weight_norm=math.nan)
    assert [e["event"] for e in events] == ["lr_backoff"] and events[0]["weights_changed"]
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1.0)


def test_backoff_target_is_checked():
    with pytest.raises(ValueError, match="backoff_target must be 'fixed_point' or 'rate'"):
        Phase2Tuner(backoff_target="lambda")


def test_tuner_state_resumes():
    H, w, loss = _quadratic([5.0, 1.0, 0.0])
    opt = GROKtimizer([w], phase2=CDM, switch=StepSwitch(0))
    observe(opt, 0, closure=loss, train_acc=1.0, train_loss=0.1)
    state = copy.deepcopy(opt.state_dict())
    w2 = w.detach().clone().requires_grad_()
    opt2 = GROKtimizer([w2], phase2=CDM, switch=StepSwitch(0))
    opt2.load_state_dict(state)
    assert opt2.phase == 2 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert opt2.tuner.weight_decay == opt.tuner.weight_decay and opt2.tuner.h == opt.tuner.h


def test_a_compiled_model_is_probed_by_differences_with_a_warning_and_a_record():
    """torch.compile (AOTAutograd) has no double backward: before, the default crashed at the
    switch. Now the probe falls back to central differences, says so once, and records it; on a
    smooth model the curvature (hence η) equals the uncompiled run's."""
    records = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 4))
        run = torch.compile(model, backend="aot_eager") if compiled else model
        x, y = torch.randn(96, 6), torch.randint(0, 4, (96,))
        closure = lambda run=run, x=x, y=y: F.cross_entropy(run(x), y)  # noqa: E731
        opt = GROKtimizer(model.parameters(), switch=StepSwitch(5))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(1, 31):
                opt.zero_grad()
                closure().backward()
                opt.step()
                loss = float(closure().detach())
                observe(opt, step, closure=closure, train_loss=loss, train_acc=1.0)
        fell_back = [w for w in caught if "central differences" in str(w.message)]
        assert len(fell_back) == (1 if compiled else 0)
        method = "finite_difference" if compiled else "autograd"
        assert opt.phase == 2 and opt.tuner.hvp_used == method
        records[compiled] = opt.auto_lr_record
    assert records[True]["hvp"] == "finite_difference" and records[False]["hvp"] == "autograd"
    assert records[True]["h_max"] == pytest.approx(records[False]["h_max"], rel=1e-3)
    assert records[True]["lr"] == pytest.approx(records[False]["lr"], rel=1e-3)
    with pytest.raises(ValueError, match="hvp must be one of auto, autograd, finite_difference"):
        Phase2Tuner(hvp="forward")


def test_a_model_over_the_probe_memory_budget_gets_the_same_step(monkeypatch):
    """Above ``LANCZOS_BASIS_BYTES`` the switch's probe keeps three vectors instead of twenty
    (the full basis held 123x the weights: 9.8 GB for 21M parameters); η and λ are the same."""
    from groktimizer import curvature

    records, full_budget = {}, curvature.LANCZOS_BASIS_BYTES
    for budget in (full_budget, 0):
        monkeypatch.setattr(curvature, "LANCZOS_BASIS_BYTES", budget)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 4))
        x, y = torch.randn(96, 6), torch.randint(0, 4, (96,))
        closure = lambda model=model, x=x, y=y: F.cross_entropy(model(x), y)  # noqa: E731
        opt = GROKtimizer(model.parameters(), switch=StepSwitch(5))
        loosened = []
        for step in range(1, 31):
            opt.zero_grad()
            closure().backward()
            opt.step()
            loss = float(closure().detach())
            events = observe(opt, step, closure=closure, train_loss=loss, train_acc=1.0)
            loosened += [e for e in events if e.get("reason") == "loosen"]
            if step == 10:  # the loosening's probe (at +20) starts from the switch's eigenvector
                assert opt.tuner.eigvec is not None
        assert opt.phase == 2
        records[budget] = opt.auto_lr_record
        # in Adam's metric no warm start follows the loosening: no eigenvector built or kept
        assert [e["hvps"] for e in loosened] == [20] and opt.tuner.eigvec is None
    full, lean = records[full_budget], records[0]
    assert full["hvps"] == 20 and lean["hvps"] == 40  # the switch's vector: a second pass
    assert lean["h_max"] == pytest.approx(full["h_max"], rel=1e-4)
    assert lean["lr"] == pytest.approx(full["lr"], rel=1e-4)
    assert lean["weight_decay"] == pytest.approx(full["weight_decay"], rel=1e-4)


# ------------------------------------------------------------ the default in a user's own loop
class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class _TinyTransformer(nn.Module):
    """2 pre-LayerNorm blocks, learned positions, fused attention (whose kernel has no double
    backward: the curvature probe must cope)."""

    def __init__(self, vocab: int, n_out: int, d: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.randn(3, d) * 0.02)
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(2))
        self.ln_f, self.out = nn.LayerNorm(d), nn.Linear(d, n_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.out(self.ln_f(h[:, -1]))


def test_default_in_a_minibatch_loop_on_a_layernorm_transformer_does_not_collapse():
    p, seed = 23, 0
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], 1)
    y = (a.flatten() + b.flatten()) % p
    perm = torch.randperm(p * p, generator=gen)
    n = int(0.6 * p * p)
    xt, yt, xv, yv = x[perm[:n]], y[perm[:n]], x[perm[n:]], y[perm[n:]]
    torch.manual_seed(seed)
    model = _TinyTransformer(p + 1, p)

    opt = GROKtimizer(model.parameters())  # no phase-2 argument at all

    def closure() -> torch.Tensor:
        return F.cross_entropy(model(xt), yt)

    history, events = [], []
    for step in range(1, 2001):
        idx = torch.randint(0, n, (128,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(xt[idx]), yt[idx]).backward()
        opt.step()
        if step % 10 == 0:
            with torch.no_grad():
                train_acc = (model(xt).argmax(-1) == yt).float().mean().item()
                val_acc = (model(xv).argmax(-1) == yv).float().mean().item()
                train_loss = closure().item()
            events += observe(
                opt, step, train_acc=train_acc, train_loss=train_loss, closure=closure
            )
            history.append((step, phase_of(opt), train_acc, val_acc))
    switch = [e for e in events if e["event"] == "switch"]
    assert len(switch) == 1 and switch[0]["auto_lr"]["preconditioned"]
    after = [h for h in history if h[1] == 2]
    assert after, "never switched"
    val_at_switch = after[0][3]
    final = history[-1]
    last = sorted(h[2] for h in after[-20:])
    assert last[len(last) // 2] >= 0.98 and final[2] >= 0.95  # the fit survives the decay
    assert final[3] > val_at_switch + 0.1  # and generalization moves on
    assert all(e.get("weights_changed") for e in events if e["event"].endswith("backoff"))
