import functools
import io

import pytest
import torch

from groktimizer import (
    CDM,
    AccuracySwitch,
    AdamCDM,
    GROKtimizer,
    StepSwitch,
    critical_momentum,
    split_decay_groups,
)


def _task(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=gen)
    y = torch.randn(64, 2, generator=gen)
    return x, y


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def _train(model, opt, x, y, start, stop, switch_at=None):
    for t in range(start, stop):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.observe(step=t + 1, train_loss=1.0)
        if switch_at is not None and t + 1 == switch_at:
            assert opt.phase == 2


def test_phase1_is_adamw_wd0_then_phase2_is_cdm():
    x, y = _task()
    m1, m2 = _model(), _model()
    opt = GROKtimizer(
        m1.parameters(), phase2=CDM, lr=0.05, weight_decay=1e-2, switch=StepSwitch(10)
    )
    adam = torch.optim.AdamW(m2.parameters(), lr=1e-3, weight_decay=0.0, betas=(0.9, 0.98))
    for t in range(10):
        for m, o in ((m1, opt), (m2, adam)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
        switched = opt.observe(step=t + 1)
    assert switched and opt.phase == 2 and opt.switch_step == 10
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt.param_groups is opt.phase2.param_groups
    assert isinstance(opt.phase2, CDM)
    # Phase 2 continues exactly like a CDM started on the same weights.
    cdm = CDM(m2.parameters(), lr=0.05, weight_decay=1e-2)
    for _ in range(5):
        for m, o in ((m1, opt), (m2, cdm)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt.num_steps == 15
    assert not opt.observe(step=16)  # nothing more happens in phase 2


def test_observe_switches_on_accuracy_with_patience():
    opt = GROKtimizer(
        _model().parameters(), lr=0.1, weight_decay=1e-3, switch=AccuracySwitch(0.99, patience=2)
    )
    assert not opt.observe(step=100, train_acc=1.0)
    assert not opt.observe(step=200, train_acc=0.5)
    assert not opt.observe(step=300, train_acc=1.0)
    events = opt.observe(step=400, train_acc=1.0)
    assert [(e["step"], e["event"]) for e in events] == [(400, "switch")]
    assert opt.switch_step == 400 and opt.phase == 2
    with pytest.raises(RuntimeError, match="already"):
        opt.switch()


def test_param_groups_carry_phase2_decay_and_phase1_settings():
    model = _model()
    groups = split_decay_groups(model, weight_decay=1e-2)
    for g in groups:
        g["phase1"] = {"lr": 3e-3}
    opt = GROKtimizer(groups, lr=0.1, weight_decay=1e-2)
    assert [g["lr"] for g in opt.phase1.param_groups] == [3e-3, 3e-3]
    assert [g["weight_decay"] for g in opt.phase1.param_groups] == [0.0, 0.0]
    assert [g["weight_decay"] for g in opt.phase2.param_groups] == [1e-2, 0.0]
    beta = critical_momentum(0.1, 1e-2)
    assert [g["momentum_used"] for g in opt.phase2.param_groups] == [beta, beta]
    decayed = {id(p) for p in opt.phase2.param_groups[0]["params"]}
    assert decayed == {id(model[0].weight), id(model[2].weight)}


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"lr": 0.1, "weight_decay": 1e-2, "damping": 0.0}, "damping"),
        ({"lr": 0.1, "weight_decay": 0.0}, "weight_decay.*> 0"),
        ({"lr": -0.1, "weight_decay": 1e-2}, "lr"),
        ({"lr": "fast", "weight_decay": 1e-2}, "lr"),
        ({"lr": 0.1, "weight_decay": "big"}, "weight_decay"),
        ({"lr_fraction": 2.0}, "lr_fraction"),
        ({"flat_rate": 0.0}, "flat_rate"),
        ({"reestimate_every": 0}, "reestimate_every"),
        ({"lr": 0.1, "weight_decay": 1e-2, "lr_auto_safety": 2.5}, "lr_auto_safety"),
        ({"lr": 0.1, "weight_decay": 1e-2, "lr_auto_safety": 0.0}, "lr_auto_safety"),
        ({"lr": 0.1, "weight_decay": 1e-2, "switch": "accuracy"}, "switch"),
        ({"phase2": functools.partial(CDM, lr=0.1, weight_decay=1e-2), "lr": -0.1}, "lr"),
        (
            {"lr": 0.1, "weight_decay": 1e-2, "phase1": functools.partial(torch.optim.Adam, lr=-1)},
            "learning rate",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GROKtimizer(_model().parameters(), **kwargs)


def _phase2_factories():
    return {
        "cdm": dict(phase2=CDM, lr=0.05, weight_decay=1e-2, damping=0.5),
        "adam_cdm": dict(phase2=functools.partial(AdamCDM, lr=1e-3, weight_decay=1.0)),
    }


@pytest.mark.parametrize("which", ["cdm", "adam_cdm"])
def test_checkpoint_mid_phase2_resumes_bit_identically(which):
    x, y = _task(1)
    kw = _phase2_factories()[which]
    switch_at, ckpt_at, total = 15, 25, 40

    ref_model = _model(3)
    ref_opt = GROKtimizer(ref_model.parameters(), switch=StepSwitch(switch_at), **kw)
    _train(ref_model, ref_opt, x, y, 0, total, switch_at)

    model = _model(3)
    opt = GROKtimizer(model.parameters(), switch=StepSwitch(switch_at), **kw)
    _train(model, opt, x, y, 0, ckpt_at, switch_at)
    assert opt.phase == 2
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    del model, opt

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    model = _model(99)  # fresh weights, overwritten by the checkpoint
    opt = GROKtimizer(model.parameters(), switch=StepSwitch(switch_at), **kw)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    assert opt.phase == 2 and opt.switch_step == switch_at and opt.num_steps == ckpt_at
    _train(model, opt, x, y, ckpt_at, total)

    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt.num_steps == ref_opt.num_steps == total


def test_adam_cdm_phase2_receives_adam_metric_at_switch():
    x, y = _task(2)
    model = _model(4)
    opt = GROKtimizer(
        model.parameters(),
        phase2=functools.partial(AdamCDM, lr=1e-4, weight_decay=3.0),
        switch=StepSwitch(5),
    )
    twin = _model(4)  # phase 1 alone: the default AdamW for the same 5 steps
    adam = torch.optim.AdamW(twin.parameters(), lr=1e-3, weight_decay=0.0, betas=(0.9, 0.98))
    for _ in range(5):
        adam.zero_grad()
        torch.nn.functional.mse_loss(twin(x), y).backward()
        adam.step()
    _train(model, opt, x, y, 0, 5)
    assert opt.phase == 2 and opt.metric_carried == 4
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(opt.phase2.state[p]["exp_avg_sq"], adam.state[q]["exp_avg_sq"])
        assert opt.phase2.state[p]["step"] == 5
    # phase 1 never steps again: its moments (twice the weights) are freed, in checkpoints too
    assert len(opt.phase1.state) == 0 and opt.state_dict()["phase1"]["state"] == {}


def test_a_phase_1_without_adams_metric_caps_phase_2_by_the_default_adam_step():
    """Phase 1 SGD: no exp_avg_sq to carry, and SGD's lr is not an Adam step. The step cap takes
    the default phase 1's Adam step (1e-3); before, it took SGD's 0.1 (η 100x too large on
    a+b mod 97, four blow-ups in a row)."""
    x, y = _task(2)
    model = _model(4)
    loss = lambda: torch.nn.functional.mse_loss(model(x), y)  # noqa: E731
    sgd = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    opt = GROKtimizer(model.parameters(), phase1=sgd, switch=StepSwitch(5))
    opt.set_curvature_closure(loss)
    events = []
    for _ in range(5):
        opt.zero_grad()
        loss().backward()
        opt.step()
        events += opt.observe(opt.num_steps, train_loss=float(loss().detach()))
    (switch,) = [e for e in events if e["event"] == "switch"]
    assert switch["metric_carried"] == 0 and switch["adam_step_assumed"] == 1e-3
    assert opt.tuner.phase1_lr == 1e-3
    beta = opt.phase2.group_momentum(opt.phase2.param_groups[0])
    cap = 3 * 1e-3 * (1 - beta)
    assert opt.phase2.param_groups[0]["lr"] == pytest.approx(cap, rel=1e-9)  # the cap binds
    # an Adam phase 1 that never stepped keeps its own lr as the reference
    m2 = _model(5)
    adam = functools.partial(torch.optim.Adam, lr=3e-3)
    opt = GROKtimizer(m2.parameters(), phase1=adam, switch=StepSwitch(0))
    opt.set_curvature_closure(lambda: torch.nn.functional.mse_loss(m2(x), y))
    (switch,) = opt.observe(0, train_loss=1.0)
    assert "adam_step_assumed" not in switch and opt.tuner.phase1_lr == 3e-3


def test_auto_lr_on_a_quadratic():
    eigs = torch.tensor([8.0, 3.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    H = q @ torch.diag(eigs) @ q.T
    w = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    wd, c = 1e-2, 0.5
    opt = GROKtimizer([w], phase2=CDM, lr="auto", weight_decay=wd, lr_auto_safety=c)
    with pytest.raises(ValueError, match="closure"):
        opt.switch()
    assert opt.phase == 1
    opt.set_curvature_closure(lambda: 0.5 * w @ H @ w)
    opt.switch()
    rec = opt.auto_lr_record
    assert rec["h_max"] == pytest.approx(8.0, rel=1e-3)
    assert rec["lr"] == pytest.approx(c / (8.0 + wd), rel=1e-3)
    assert opt.param_groups[0]["lr"] == rec["lr"]
    assert opt.param_groups[0]["momentum_used"] == critical_momentum(rec["lr"], wd)
    assert rec["safety"] == c and rec["hvps"] >= 1

    restored = GROKtimizer([w], phase2=CDM, lr="auto", weight_decay=wd)
    restored.load_state_dict(opt.state_dict())
    assert restored.auto_lr_record == rec and restored.param_groups[0]["lr"] == rec["lr"]


def test_scheduler_and_clipping_see_the_active_phase():
    model = _model()
    opt = GROKtimizer(model.parameters(), lr=0.1, weight_decay=1e-2, switch=StepSwitch(1))
    opt.switch()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = _task()
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()
    sched.step()
    assert opt.phase2.param_groups[0]["lr"] == 0.05
    opt.step()
    assert opt.phase2.param_groups[0]["momentum_used"] == critical_momentum(0.05, 1e-2)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.proj = torch.nn.Linear(4, 4)
        self.ln = torch.nn.LayerNorm(4)
        self.pos = torch.nn.Parameter(torch.zeros(3, 4))


def test_split_decay_groups_excludes_biases_norms_and_optionally_embeddings():
    m = _Tiny()
    default = split_decay_groups(m, weight_decay=0.1)
    assert [g["weight_decay"] for g in default] == [0.1, 0.0]
    assert default[0]["param_names"] == ["pos", "embed.weight", "proj.weight"]
    assert default[1]["param_names"] == ["proj.bias", "ln.weight", "ln.bias"]
    no_embed = split_decay_groups(m, 0.1, exclude=("bias", "norm", "embed"))
    assert no_embed[0]["param_names"] == ["pos", "proj.weight"]
    everything = split_decay_groups(m, 0.1, exclude=(), exclude_1d=False)
    assert len(everything) == 1 and len(everything[0]["params"]) == 6
    with pytest.raises(ValueError, match="weight_decay"):
        split_decay_groups(m, -1.0)
    with pytest.raises(ValueError, match="exclude"):
        split_decay_groups(m, 0.1, exclude="bias")


def test_optimizer_wrappers_survive_deepcopy():
    import copy

    opt = GROKtimizer(_model().parameters(), lr=0.1, weight_decay=1e-2)
    clone = copy.deepcopy(opt)
    assert clone.phase == 1 and len(clone.param_groups) == 1


def _switching_opt(**kwargs):
    import functools

    from groktimizer import AdamCDM, StepSwitch

    w = torch.nn.Parameter(torch.randn(4))
    opt = GROKtimizer(
        [w],
        phase2=functools.partial(AdamCDM, lr=2e-4, weight_decay=5.0),
        switch=StepSwitch(3),
        **kwargs,
    )
    return w, opt


def _run_steps(w, opt, n, scheduler=None):
    for _ in range(n):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        opt.observe(step=opt.num_steps, train_acc=1.0)


def test_scheduler_built_on_the_groktimizer_warns_at_the_switch():
    """The trap: LambdaLR(opt, ...) in phase 1 would set phase 2's lr from phase 1's base lr."""
    w, opt = _switching_opt()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.warns(UserWarning, match="phase2_scheduler"):
        _run_steps(w, opt, 4, sched)
    assert opt.phase == 2


def test_phase2_scheduler_starts_from_phase_2s_lr_and_leaves_phase_1_alone():
    w, opt = _switching_opt(
        phase2_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda k: 0.5**k)
    )
    _run_steps(w, opt, 3)
    assert opt.phase == 2 and opt.phase1.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-4)
    _run_steps(w, opt, 2)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.25)
    # the scheduler's position survives a checkpoint
    state = opt.state_dict()
    w2, opt2 = _switching_opt(
        phase2_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda k: 0.5**k)
    )
    opt2.load_state_dict(state)
    assert opt2.phase2_scheduler.last_epoch == opt.phase2_scheduler.last_epoch


def test_default_phase2_is_the_l2_adam_metric_cdm_with_its_measured_settings():
    opt = GROKtimizer(_model().parameters())
    p2 = opt.phase2
    assert type(p2).__name__ == "AdamCDML2"
    g = p2.param_groups[0]
    assert (g["metric_decay"], g["scale_floor"], g["scale_rule"]) == (True, 0.1, "first")
    assert opt.tuner is not None and opt.tuner.lr_auto and opt.tuner.weight_decay_auto
    opt = GROKtimizer(_model().parameters(), damping=0.5)
    assert opt.phase2.param_groups[0]["damping"] == 0.5  # damping reaches AdamCDML2
    with pytest.raises(ValueError, match="nesterov=True needs a phase 2 of the CDM family"):
        GROKtimizer(_model().parameters(), nesterov=True)


def test_rho_switch_without_a_weight_decay_fails_at_construction_when_lambda_is_auto():
    from groktimizer import AnySwitch, RhoSwitch

    for switch in (RhoSwitch(), AnySwitch(AccuracySwitch(0.999), RhoSwitch())):
        with pytest.raises(ValueError, match="RhoSwitch needs a weight_decay"):
            GROKtimizer(_model().parameters(), switch=switch)
    GROKtimizer(_model().parameters(), switch=RhoSwitch(weight_decay=1.0))  # given: fine
    GROKtimizer(_model().parameters(), lr=0.1, weight_decay=1e-2, switch=RhoSwitch())  # fixed λ


def test_default_switch_fires_on_a_stalled_phase_1_and_says_so():
    """GROKtimizer's default criterion: 99% train accuracy at 3 observations running, or no new
    best for 1,000 steps above 95% (a phase 1 that levels off short of it)."""
    x, y = _task()
    model = _model()
    opt = GROKtimizer(model.parameters())

    def closure():
        return torch.nn.functional.mse_loss(model(x), y)

    closure().backward()
    opt.step()
    assert opt.observe(10, closure=closure, train_acc=0.9899) == []  # under 99%: its best
    assert opt.observe(500, closure=closure, train_acc=0.98) == []
    assert opt.phase == 1
    (ev,) = [
        e for e in opt.observe(1010, closure=closure, train_acc=0.981) if e["event"] == "switch"
    ]
    assert opt.phase == 2 and ev["cause"] == "stall" and opt.switch_step == 1010
    other = _model(1)
    ok = GROKtimizer(other.parameters())  # the threshold itself: no cause recorded

    def other_closure():
        return torch.nn.functional.mse_loss(other(x), y)

    ok.observe(10, closure=other_closure, train_acc=0.99)
    ok.observe(20, closure=other_closure, train_acc=0.99)
    events = ok.observe(30, closure=other_closure, train_acc=0.99)
    assert ok.phase == 2 and "cause" not in [e for e in events if e["event"] == "switch"][0]
    # a loop that evaluates every 100 steps: the second observation at 99% (the span of 20)
    third = _model(2)
    sparse = GROKtimizer(third.parameters())
    assert sparse.criterion.hold == 20

    def third_closure():
        return torch.nn.functional.mse_loss(third(x), y)

    sparse.observe(100, closure=third_closure, train_acc=0.995)
    sparse.observe(200, closure=third_closure, train_acc=0.995)
    assert sparse.phase == 2 and sparse.switch_step == 200


@pytest.mark.parametrize(
    "switch,metrics,warned",
    [
        (None, {"train_loss": 0.5}, "train_acc"),  # the default reads train accuracy
        (None, {"train_loss": 0.5, "train_acc": 0.5}, None),
        ("loss", {"train_loss": 0.5}, None),
        ("any", {"train_loss": 0.5}, None),  # its StepSwitch needs nothing
        ("all", {"train_loss": 0.5}, "train_acc"),
        ("rho", {"grad_norm": 1.0}, "rho (or grad_norm and weight_norm)"),
    ],
)
def test_a_switch_that_never_gets_its_metric_is_warned_about_once(switch, metrics, warned):
    import warnings

    from groktimizer import AllSwitch, AnySwitch, LossSwitch, RhoSwitch
    from groktimizer.biphasic import MISSING_METRIC_AFTER

    crit = {
        None: None,
        "loss": LossSwitch(1e-9),
        "any": AnySwitch(AccuracySwitch(), StepSwitch(10**6)),
        "all": AllSwitch(AccuracySwitch(), LossSwitch(1e-9)),
        "rho": RhoSwitch(weight_decay=1.0),
    }[switch]
    model = _model()
    x, y = _task()
    opt = GROKtimizer(model.parameters(), switch=crit)
    opt.set_curvature_closure(lambda: torch.nn.functional.mse_loss(model(x), y))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 3 * MISSING_METRIC_AFTER):
            opt.observe(step, **metrics)
    said = [str(w.message) for w in caught if "observations have not given" in str(w.message)]
    assert opt.phase == 1
    if warned is None:
        assert said == []
    else:
        assert len(said) == 1 and f"reads {warned}, which" in said[0]
        assert f"given: {', '.join(sorted(metrics))}" in said[0]


def test_a_loop_without_a_curvature_closure_is_told_at_its_first_evaluation():
    """lr='auto' measures the curvature at the switch on a closure's loss. A loop that passed
    none trained all of phase 1 (690 steps on a small MLP) and raised at the switch; now the
    first evaluation with none to use says so. A closure given once is used where later
    observe() calls give none; a fixed lr needs none."""
    x, y = _task()
    model = _model()
    opt = GROKtimizer(model.parameters(), switch=StepSwitch(3))
    with pytest.raises(ValueError, match=r"lr='auto' measures the curvature at the switch .* got "):
        opt.observe(1, train_acc=0.5)
    assert opt.phase == 1

    def closure():
        return torch.nn.functional.mse_loss(model(x), y)

    opt.observe(1, closure=closure, train_acc=0.5)
    opt.observe(2, train_acc=0.5)
    opt.observe(3, train_acc=0.5)  # switches, measuring with the closure given at step 1
    assert opt.phase == 2 and opt.auto_lr_record["h_max"] > 0
    fixed = GROKtimizer(_model(1).parameters(), lr=1e-3, weight_decay=1.0, switch=StepSwitch(2))
    fixed.observe(1, train_acc=0.5)
    fixed.observe(2, train_acc=0.5)
    assert fixed.phase == 2


def test_a_train_accuracy_in_percent_is_refused():
    """The switch and the tuner read train_acc as a fraction; a percentage is an error at the
    observation that gives it (before, the default switched at 43.8% train accuracy)."""
    x, y = _task()
    model = _model()
    opt = GROKtimizer(model.parameters(), switch=StepSwitch(10**6))
    closure = lambda: torch.nn.functional.mse_loss(model(x), y)  # noqa: E731
    with pytest.raises(ValueError, match=r"GROKtimizer: train_acc must be a fraction in \[0, 1\]"):
        opt.observe(10, closure=closure, train_acc=43.8)
    opt.observe(10, closure=closure, train_acc=0.438)
    assert opt.phase == 1


@pytest.mark.parametrize("pace", [1, 100])
def test_observe_steps_that_are_not_optimizer_steps_are_warned_about_once(pace):
    """A loop that passes its epoch (100 optimizer steps each) as observe's step would stretch
    every window (a 300-step collapse window: 300 epochs). Warned once; optimizer steps pass."""
    import warnings

    x, y = _task()
    model = _model()
    opt = GROKtimizer(model.parameters(), switch=StepSwitch(10**6))
    closure = lambda: torch.nn.functional.mse_loss(model(x), y)  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _epoch in range(1, 5):
            for _ in range(100):
                opt.zero_grad()
                closure().backward()
                opt.step()
            opt.observe(opt.num_steps // pace, closure=closure, train_acc=0.5)
    said = [str(w.message) for w in caught if "optimizer steps were taken" in str(w.message)]
    if pace == 1:
        assert said == []
    else:
        assert len(said) == 1 and "advanced by 1 while 100 optimizer steps" in said[0]
