"""BatchedOptimizer: each member's trajectory equals its own run with the library's optimizer.

K small MLPs (different seeds, data and hyperparameters) are stacked; the batch trains through
``functional_call`` + ``vmap``, the references one model at a time with CDM, AdamCDM, torch
Adam/AdamW, the Grokfast filters and GROKtimizer. Parameters must agree within 1e-5 (relative
norm of the difference) after every run, including across switches at different steps.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from groktimizer.adam_cdm import AdamCDM
from groktimizer.batched import (
    BatchedOptimizer,
    EMASpec,
    MASpec,
    MemberSpec,
    Phase1Spec,
    critical_momentum_batched,
    stack_modules,
)
from groktimizer.biphasic import GROKtimizer
from groktimizer.cdm import CDM, critical_momentum
from groktimizer.filters import GradFilterEMA, GradFilterMA
from groktimizer.switch import StepSwitch

STEPS = 60
N, D_IN, WIDTH, CLASSES = 48, 10, 24, 5


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, WIDTH), nn.ReLU(), nn.Linear(WIDTH, CLASSES))


def _data(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000)
    x = torch.randn(k, N, D_IN, generator=g)
    y = torch.randint(0, CLASSES, (k, N), generator=g)
    return x, y


@torch.no_grad()
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


class Pair:
    """A batch of K members and their K reference runs, stepped side by side."""

    def __init__(self, specs, make_ref, *, no_decay=None, filters=None, **kw) -> None:
        self.K = len(specs)
        self.models = [_model(k) for k in range(self.K)]
        self.refs = [copy.deepcopy(m) for m in self.models]
        self.stacked = stack_modules(self.models)
        self.names = list(self.stacked)
        nd = None if no_decay is None else [no_decay(n) for n in self.names]
        self.opt = BatchedOptimizer(list(self.stacked.values()), specs, no_decay=nd, **kw)
        self.ref_opts = [make_ref(k, m) for k, m in enumerate(self.refs)]
        self.filters = filters or [None] * self.K
        self.x, self.y = _data(self.K)
        base = self.models[0]

        def loss(params, x, y):
            return F.cross_entropy(functional_call(base, params, (x,)), y)

        self.loss = vmap(loss)
        self.t = 0

    def step(self, ref_members=None, clip=None, forward="vmap") -> None:
        self.opt.zero_grad()
        if forward == "vmap":
            self.loss(self.stacked, self.x, self.y).sum().backward()
        else:  # each member's own model: its gradients land in the stack (stack_modules views)
            for k, m in enumerate(self.models):
                F.cross_entropy(m(self.x[k]), self.y[k]).backward()
        self.opt.step()
        for k in ref_members if ref_members is not None else range(self.K):
            m, o = self.refs[k], self.ref_opts[k]
            o.zero_grad()
            F.cross_entropy(m(self.x[k]), self.y[k]).backward()
            if self.filters[k] is not None:
                self.filters[k].apply(m.parameters())
            if clip is not None:
                nn.utils.clip_grad_norm_(m.parameters(), clip)
            o.step()
        self.t += 1

    def errors(self) -> list[float]:
        return [
            max(_rel(self.stacked[n][k].detach(), p.detach()) for n, p in m.named_parameters())
            for k, m in enumerate(self.refs)
        ]

    def check(self, tol: float = 1e-5) -> None:
        errs = self.errors()
        assert max(errs) <= tol, errs
        # the members' own modules are views of the stack
        for k, m in enumerate(self.models):
            for n, p in m.named_parameters():
                assert torch.equal(p, self.stacked[n][k])
        # the runs moved (a step that did nothing would also "match")
        moved = [_rel(m[0].weight, _model(k)[0].weight) for k, m in enumerate(self.refs)]
        assert min(moved) > 1e-3, moved


def _bias(name: str) -> bool:
    return name.endswith("bias")


def test_cdm_members_match_cdm():
    specs = [
        MemberSpec("cdm", lr=0.5, weight_decay=1e-2),
        MemberSpec("cdm", lr=0.2, weight_decay=5e-2, damping=0.5),
        MemberSpec("cdm", lr=0.3, weight_decay=1e-2, nesterov=True),
        MemberSpec("cdm", lr=0.1, weight_decay=1e-3, momentum=0.0),  # plain GD phase 2
        MemberSpec("cdm", lr=0.3, weight_decay=2e-2, momentum=0.8, damping=2.0),
    ]

    def ref(k, m):
        s = specs[k]
        groups = [
            {"params": [p for n, p in m.named_parameters() if not _bias(n)]},
            {"params": [p for n, p in m.named_parameters() if _bias(n)], "weight_decay": 0.0},
        ]
        return CDM(groups, s.lr, s.weight_decay, s.damping, s.nesterov, s.momentum)

    pair = Pair(specs, ref, no_decay=_bias)
    for _ in range(STEPS):
        pair.step()
    pair.check()
    betas = [o.param_groups[0]["momentum_used"] for o in pair.ref_opts]
    assert pair.opt.momentum_used.tolist() == pytest.approx(betas, rel=1e-12)
    assert [pair.opt.member_row(k)["momentum"] for k in range(5)] == pytest.approx(betas)


def test_adam_cdm_members_match_adam_cdm():
    specs = [
        MemberSpec("adam_cdm", lr=2e-3, weight_decay=1.0),
        MemberSpec("adam_cdm", lr=1e-3, weight_decay=3.0, damping=0.5, betas=(0.9, 0.95)),
        MemberSpec("adam_cdm", lr=2e-3, weight_decay=1.0, eps=1e-3, v_floor=1e-2),
        MemberSpec("adam_cdm", lr=1e-3, weight_decay=0.5, freeze_v=True),
    ]
    nesterov = "nesterov" in inspect.signature(AdamCDM).parameters  # AdamCDM gained it lately
    if nesterov:
        specs.append(MemberSpec("adam_cdm", lr=1e-3, weight_decay=1.0, nesterov=True))
        specs.append(MemberSpec("adam_cdm", lr=1e-3, weight_decay=1.0, momentum=0.9))

    def ref(k, m):
        s = specs[k]
        extra = {"nesterov": s.nesterov, "momentum": s.momentum} if nesterov else {}
        return AdamCDM(
            m.parameters(), s.lr, s.weight_decay, s.damping, s.betas[1], s.eps, s.v_floor,
            s.freeze_v, **extra,
        )  # fmt: skip

    pair = Pair(specs, ref)
    for _ in range(STEPS):
        pair.step()
    pair.check()
    # a frozen metric counts one update (the first gradient), the others every step
    assert pair.opt._step.tolist()[:4] == [STEPS, STEPS, STEPS, 1]


def test_adam_and_adamw_members_match_torch():
    specs = [
        MemberSpec("adamw", lr=1e-2, weight_decay=1.0),
        MemberSpec("adamw", lr=5e-3, weight_decay=0.0, betas=(0.8, 0.99)),
        MemberSpec("adam", lr=1e-2, weight_decay=1e-2, eps=1e-6),
        MemberSpec("adam", lr=3e-3, weight_decay=0.0),
    ]

    def ref(k, m):
        s = specs[k]
        cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
        groups = [
            {"params": [p for n, p in m.named_parameters() if not _bias(n)]},
            {"params": [p for n, p in m.named_parameters() if _bias(n)], "weight_decay": 0.0},
        ]
        return cls(groups, lr=s.lr, betas=s.betas, eps=s.eps, weight_decay=s.weight_decay)

    pair = Pair(specs, ref, no_decay=_bias)
    for _ in range(STEPS):
        pair.step()
    pair.check()


def test_ema_filter_around_adam_matches_grokfast():
    specs = [
        MemberSpec("adam", lr=1e-2, weight_decay=5e-3, grad_filter=EMASpec(0.98, 2.0)),
        MemberSpec("adam", lr=5e-3, weight_decay=0.0, grad_filter=EMASpec(0.8, 0.1)),
        MemberSpec("adamw", lr=1e-2, weight_decay=1.0),  # unfiltered member in the same batch
    ]
    filters = [GradFilterEMA(0.98, 2.0), GradFilterEMA(0.8, 0.1), None]

    def ref(k, m):
        s = specs[k]
        cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
        return cls(m.parameters(), lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)

    pair = Pair(specs, ref, filters=filters)
    for _ in range(STEPS):
        pair.step()
    pair.check()


@pytest.mark.parametrize("warmup", [True, False])
def test_ma_filter_around_adam_matches_grokfast(warmup):
    specs = [
        MemberSpec("adam", lr=1e-2, weight_decay=1e-2, grad_filter=MASpec(7, 5.0, warmup=warmup)),
        MemberSpec("adam", lr=5e-3, weight_decay=0.0, grad_filter=MASpec(7, 1.0, warmup=warmup)),
    ]
    filters = [GradFilterMA(7, 5.0, warmup=warmup), GradFilterMA(7, 1.0, warmup=warmup)]

    def ref(k, m):
        s = specs[k]
        return torch.optim.Adam(m.parameters(), lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)

    pair = Pair(specs, ref, filters=filters)
    for _ in range(STEPS):
        pair.step()
    pair.check()


def test_groktimizer_members_switch_at_their_own_steps():
    p1 = Phase1Spec("adamw", lr=1e-2)
    specs = [
        MemberSpec("adam_cdm", lr=1e-3, weight_decay=2.0, phase1=p1, switch=StepSwitch(10)),
        MemberSpec(
            "adam_cdm",
            lr=5e-4,
            weight_decay=1.0,
            betas=(0.9, 0.95),
            v_floor=1e-3,
            phase1=Phase1Spec("adam", lr=5e-3, weight_decay=1e-3, betas=(0.8, 0.99)),
            switch=StepSwitch(25),
        ),  # fmt: skip
        MemberSpec("cdm", lr=0.2, weight_decay=1e-2, phase1=p1, switch=StepSwitch(17)),
        MemberSpec("adamw", lr=3e-3, weight_decay=0.5, phase1=p1, switch=StepSwitch(30)),
        MemberSpec("adamw", lr=1e-2, weight_decay=1.0),  # one phase: never switches
    ]

    def ref(k, m):
        s = specs[k]
        if s.phase1 is None:
            return torch.optim.AdamW(m.parameters(), lr=s.lr, betas=s.betas, weight_decay=1.0)
        q = s.phase1
        cls = torch.optim.AdamW if q.name == "adamw" else torch.optim.Adam
        phase1 = functools.partial(cls, lr=q.lr, weight_decay=q.weight_decay, betas=q.betas)
        if s.optimizer == "adam_cdm":
            phase2 = functools.partial(
                AdamCDM, lr=s.lr, weight_decay=s.weight_decay, beta2=s.betas[1], v_floor=s.v_floor
            )
        elif s.optimizer == "cdm":
            phase2 = functools.partial(CDM, lr=s.lr, weight_decay=s.weight_decay)
        else:
            phase2 = functools.partial(
                torch.optim.AdamW, lr=s.lr, weight_decay=s.weight_decay, betas=s.betas
            )
        sw = StepSwitch(s.switch.at_step)
        return GROKtimizer(m.parameters(), phase1=phase1, phase2=phase2, switch=sw)

    pair = Pair(specs, ref)
    for _ in range(STEPS):
        pair.step()
        events = pair.opt.observe(pair.t, {"train_acc": [0.5] * pair.K})
        for k, o in enumerate(pair.ref_opts):
            if isinstance(o, GROKtimizer):
                assert o.observe(step=pair.t, train_acc=0.5) == events[k]
    pair.check()
    assert pair.opt.phase.tolist() == [2, 2, 2, 2, 1]
    assert pair.opt.switch_step == [10, 25, 17, 30, None]
    assert [o.switch_step for o in pair.ref_opts[:4]] == [10, 25, 17, 30]
    lrs = [pair.opt.member_row(k)["lr"] for k in range(pair.K)]
    assert lrs == [1e-3, 5e-4, 0.2, 3e-3, 1e-2]


def test_inactive_member_is_frozen_and_the_others_still_match():
    at = (5, 15, 100)
    specs = [
        MemberSpec(
            "adam_cdm", lr=1e-3, weight_decay=1.0, phase1=Phase1Spec(lr=1e-2), switch=StepSwitch(s)
        )  # fmt: skip
        for s in at
    ]
    phase1 = functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.0, betas=(0.9, 0.98))
    phase2 = functools.partial(AdamCDM, lr=1e-3, weight_decay=1.0)
    pair = Pair(
        specs,
        lambda k, m: GROKtimizer(m.parameters(), phase1, phase2, switch=StepSwitch(at[k])),
    )
    for _ in range(20):
        pair.step()
        for o in pair.ref_opts:
            o.observe(step=pair.t)
        pair.opt.observe(pair.t, {})
    pair.opt.set_active([True, False, True])
    frozen = {n: t[1].detach().clone() for n, t in pair.stacked.items()}
    state = {n: [x[1].clone() for x in ts] for n, ts in pair.opt.state.items()}
    for _ in range(20):
        pair.step(ref_members=[0, 2])
    for n, t in pair.stacked.items():
        assert torch.equal(t[1], frozen[n])
    for n, ts in pair.opt.state.items():
        assert all(torch.equal(x[1], y) for x, y in zip(ts, state[n], strict=True))
    errs = pair.errors()
    assert errs[0] <= 1e-5 and errs[2] <= 1e-5, errs
    assert pair.opt.num_steps.tolist() == [40, 20, 40]


def test_member_models_backward_into_the_stack():
    specs = [MemberSpec("adam_cdm", lr=1e-3, weight_decay=w, phase1=Phase1Spec(lr=1e-2),
                        switch=StepSwitch(20)) for w in (1.0, 3.0)]  # fmt: skip
    phase1 = functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.0, betas=(0.9, 0.98))

    def ref(k, m):
        phase2 = functools.partial(AdamCDM, lr=1e-3, weight_decay=specs[k].weight_decay)
        return GROKtimizer(m.parameters(), phase1, phase2, switch=StepSwitch(20))

    pair = Pair(specs, ref)
    for _ in range(40):
        pair.step(forward="loop")
        pair.opt.observe(pair.t, {})
        for o in pair.ref_opts:
            o.observe(step=pair.t)
    pair.check()
    for k, m in enumerate(pair.models):  # still views after 40 zero_grad/backward rounds
        for n, p in m.named_parameters():
            assert p.grad.data_ptr() == pair.stacked[n].grad[k].data_ptr()


def test_per_member_gradient_clipping_matches_clip_grad_norm():
    specs = [MemberSpec("adamw", lr=1e-2, weight_decay=1.0)] * 3
    pair = Pair(
        specs,
        lambda k, m: torch.optim.AdamW(
            m.parameters(), lr=1e-2, weight_decay=1.0, betas=(0.9, 0.98)
        ),
        max_grad_norm=0.05,
    )
    for _ in range(30):
        pair.step(clip=0.05)
    pair.check()


def test_state_dict_round_trip_continues_the_same_trajectory():
    def specs():
        return [
            MemberSpec(
                "adam_cdm",
                lr=1e-3,
                weight_decay=1.0,
                phase1=Phase1Spec(lr=1e-2),
                switch=StepSwitch(s),
                grad_filter=EMASpec(0.9, 1.0),
            )  # fmt: skip
            for s in (5, 12)
        ]

    def run(steps, opt_state=None, params=None):
        models = [_model(k) for k in range(2)]
        stacked = stack_modules(models)
        if params is not None:
            with torch.no_grad():
                for n in stacked:
                    stacked[n].copy_(params[n])
        opt = BatchedOptimizer(list(stacked.values()), specs())
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        x, y = _data(2)
        base = models[0]
        loss = vmap(lambda p, x, y: F.cross_entropy(functional_call(base, p, (x,)), y))
        for _ in range(steps):
            opt.zero_grad()
            loss(stacked, x, y).sum().backward()
            opt.step()
            opt.observe(int(opt.num_steps[0]), {})
        return {n: t.detach().clone() for n, t in stacked.items()}, opt

    whole, _ = run(20)
    half, opt = run(10)
    sd = opt.state_dict()
    assert sd["phase"].tolist() == [2, 1] and sd["switch_step"] == [5, None]
    resumed, opt2 = run(10, opt_state=sd, params=half)
    for n in whole:
        assert torch.equal(whole[n], resumed[n])
    assert opt2.switch_step == [5, 12]


def test_critical_momentum_batched_equals_the_library_formula():
    lr = torch.tensor([1.0, 0.1, 2e-4, 4.0], dtype=torch.float64)
    wd = torch.tensor([1e-3, 1e-2, 5.0, 1.0], dtype=torch.float64)
    z = torch.tensor([1.0, 0.5, 2.0, 1.0], dtype=torch.float64)
    for nest in (False, True):
        got = critical_momentum_batched(lr, wd, z, torch.full((4,), float(nest)))
        want = [
            critical_momentum(*a, nesterov=nest)
            for a in zip(lr.tolist(), wd.tolist(), z.tolist(), strict=True)
        ]
        assert got.tolist() == pytest.approx(want, rel=1e-15)


def test_set_lr_moves_beta_like_a_scheduler_on_cdm():
    specs = [
        MemberSpec("cdm", lr=0.5, weight_decay=1e-2),
        MemberSpec("cdm", lr=0.3, weight_decay=1e-2),
    ]
    pair = Pair(specs, lambda k, m: CDM(m.parameters(), specs[k].lr, 1e-2))
    for t in range(30):
        if t == 10:
            pair.opt.set_lr([0.1, 0.05])
            for o, lr in zip(pair.ref_opts, (0.1, 0.05), strict=True):
                o.param_groups[0]["lr"] = lr
        pair.step()
    pair.check()
    assert pair.opt.lr.tolist() == [0.1, 0.05]
    assert pair.opt.momentum_used[1] == pytest.approx(critical_momentum(0.05, 1e-2))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": "auto"}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"damping": 0.0}, "damping"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"momentum": 1.0}, "momentum"),
        ({"v_floor": -1.0}, "v_floor"),
        ({"optimizer": "sgdx"}, "optimizer"),
        ({"weight_decay": 0.0}, "weight_decay"),
    ],
)
def test_member_spec_rejects_bad_arguments_naming_them(kwargs, name):
    args = {"optimizer": "cdm", "lr": 0.1, "weight_decay": 1e-3, **kwargs}
    with pytest.raises(ValueError, match=rf"MemberSpec: {name} must be") as e:
        MemberSpec(**args)
    assert "\n" not in str(e.value)


def test_batched_optimizer_rejects_bad_arguments_naming_them():
    p = torch.zeros(3, 4, requires_grad=True)
    spec = MemberSpec("cdm", lr=0.1, weight_decay=1e-3)
    with pytest.raises(ValueError, match=r"params\[0\] must be a tensor \[K=2"):
        BatchedOptimizer([p], [spec, spec])
    with pytest.raises(ValueError, match="no_decay must be one bool per parameter"):
        BatchedOptimizer([p], [spec] * 3, no_decay=[True, False])
    with pytest.raises(ValueError, match="max_grad_norm must be"):
        BatchedOptimizer([p], [spec] * 3, max_grad_norm=0.0)
    mixed = [
        MemberSpec("adam", lr=1e-3, weight_decay=0.0, grad_filter=EMASpec()),
        MemberSpec("adam", lr=1e-3, weight_decay=0.0, grad_filter=MASpec()),
        spec,
    ]
    with pytest.raises(ValueError, match=r"grad_filter must be all EMASpec or all MASpec"):
        BatchedOptimizer([p], mixed)
    with pytest.raises(ValueError, match="Phase1Spec: name must be"):
        Phase1Spec(name="sgd")
    opt = BatchedOptimizer([p], [spec] * 3)
    with pytest.raises(ValueError, match="member 0 has no phase 1"):
        opt.switch([0])
    assert math.isnan(float(opt.momentum_used[0]))


def test_member_spec_reads_the_factories_a_single_run_is_built_from():
    from groktimizer.batched import member_spec
    from groktimizer.switch import AccuracySwitch

    sw = AccuracySwitch(threshold=0.99, patience=3)
    schedule = functools.partial(
        GROKtimizer,
        phase1=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0, betas=[0.9, 0.98]),
        switch=sw,
    )
    s = member_spec(
        functools.partial(AdamCDM, lr=2e-4, weight_decay=5.0, beta2=0.95),
        schedule,
        GradFilterEMA(0.9, 1.5),
    )
    assert (s.optimizer, s.lr, s.weight_decay, s.betas[1], s.eps) == (
        "adam_cdm",
        2e-4,
        5.0,
        0.95,
        1e-8,
    )
    assert s.phase1 == Phase1Spec("adamw", 1e-3, 0.0, (0.9, 0.98), 1e-8)
    assert isinstance(s.switch, AccuracySwitch) and s.switch is not sw  # one criterion per member
    assert s.switch.threshold == 0.99 and s.grad_filter == EMASpec(0.9, 1.5)
    # torch's own defaults fill what the partial leaves out (AdamW: weight decay 0.01)
    w = member_spec(functools.partial(torch.optim.AdamW, lr=1e-3), None, GradFilterMA(50, 5.0))
    assert (w.optimizer, w.weight_decay, w.betas, w.phase1) == ("adamw", 1e-2, (0.9, 0.999), None)
    assert w.grad_filter == MASpec(50, 5.0)
    gd = member_spec(functools.partial(CDM, lr=1.0, weight_decay=1e-3, momentum=0.0))
    assert (gd.optimizer, gd.momentum) == ("cdm", 0.0)
    sgd = member_spec(functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9))
    assert (sgd.optimizer, sgd.momentum, sgd.weight_decay) == ("cdm", 0.9, 0.0)
    with pytest.raises(ValueError, match="member_spec: optimizer must build"):
        member_spec(functools.partial(torch.optim.RMSprop, lr=1e-3))
    with pytest.raises(ValueError, match="member_spec: schedule must not set lr"):
        member_spec(
            functools.partial(CDM, lr=1.0, weight_decay=1e-3),
            functools.partial(GROKtimizer, lr="auto"),
        )
    with pytest.raises(ValueError, match="member_spec: optimizer must not set maximize"):
        member_spec(functools.partial(torch.optim.Adam, lr=1e-3, amsgrad=True))
