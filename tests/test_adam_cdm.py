import copy
import math

import pytest
import torch

from groktimizer import AdamCDM, critical_momentum


def _reference(w0, grads, lr, wd, zeta, beta2, eps, v0=None, step0=0, v_floor=None):
    """Hand-written AdamCDM recursion (float64, one tensor)."""
    w = w0.clone()
    v = torch.zeros_like(w) if v0 is None else v0.clone()
    t = step0
    buf = None
    beta = (1 - zeta * math.sqrt(lr * wd)) ** 2
    for g in grads:
        t += 1
        v = beta2 * v + (1 - beta2) * g * g
        root = torch.sqrt(v / (1 - beta2**t))
        if v_floor is not None:
            root = torch.clamp(root, min=v_floor)
        d = g / (root + eps) + wd * w
        buf = d if buf is None else beta * buf + d
        w = w - lr * buf
    return w, v


@pytest.mark.parametrize("foreach", [False, True])
def test_matches_hand_written_recursion(foreach):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    grads = [torch.randn(5, 4, generator=gen, dtype=torch.float64) for _ in range(20)]
    lr, wd, zeta = 1e-3, 3.0, 0.7
    w = w0.clone().requires_grad_()
    opt = AdamCDM([w], lr=lr, weight_decay=wd, damping=zeta, v_floor=0.05, foreach=foreach)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    ref_w, ref_v = _reference(w0, grads, lr, wd, zeta, 0.98, 1e-8, v_floor=0.05)
    assert torch.allclose(w.detach(), ref_w, rtol=0, atol=1e-12)
    assert torch.allclose(opt.state[w]["exp_avg_sq"], ref_v, rtol=0, atol=1e-14)
    assert opt.state[w]["step"] == 20
    assert opt.param_groups[0]["momentum_used"] == critical_momentum(lr, wd, zeta)


def test_foreach_and_single_tensor_paths_are_identical():
    gen = torch.Generator().manual_seed(1)
    shapes = [(3, 4), (4,), (2, 2, 2)]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(15)]
    out = []
    for foreach in (False, True):
        ps = [torch.ones(s, requires_grad=True) for s in shapes]
        opt = AdamCDM(ps, lr=1e-2, weight_decay=1.0, foreach=foreach)
        for gs in grads:
            for p, g in zip(ps, gs, strict=True):
                p.grad = g.clone()
            opt.step()
        out.append(ps)
    for a, b in zip(*out, strict=True):
        assert torch.equal(a, b)


def test_init_from_adam_carries_second_moment_and_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    adam = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0)
    for _ in range(7):
        adam.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        adam.step()
    opt = AdamCDM(model.parameters(), lr=1e-4, weight_decay=3.0)
    assert opt.init_from_adam(adam) == 2
    for p in model.parameters():
        assert torch.equal(opt.state[p]["exp_avg_sq"], adam.state[p]["exp_avg_sq"])
        assert opt.state[p]["exp_avg_sq"] is not adam.state[p]["exp_avg_sq"]
        assert opt.state[p]["step"] == 7

    # The next step continues Adam's v (step 8 bias correction), not a fresh one.
    w0 = model.weight.detach().clone().double()
    v0 = adam.state[model.weight]["exp_avg_sq"].double()
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    g = model.weight.grad.detach().clone().double()
    opt.step()
    ref_w, _ = _reference(w0, [g], 1e-4, 3.0, 1.0, 0.98, 1e-8, v0=v0, step0=7)
    assert torch.allclose(model.weight.detach().double(), ref_w, rtol=0, atol=1e-6)


@pytest.mark.parametrize("zeta", [0.25, 0.5, 1.0])
def test_flat_mode_rate_on_pure_decay(zeta):
    lr, wd = 1e-2, 1.0  # √(ηλ) = 0.1
    w = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = AdamCDM([w], lr=lr, weight_decay=wd, damping=zeta)
    xs = [1.0]
    for _ in range(300):
        w.grad = torch.zeros_like(w)
        opt.step()
        xs.append(w.item())
    xs = torch.tensor(xs[5:], dtype=torch.float64)
    A = torch.stack([xs[1:-1], -xs[:-2]], dim=1)
    c, b = torch.linalg.lstsq(A, xs[2:, None]).solution.flatten().tolist()
    rate = torch.linalg.eigvals(torch.tensor([[c, -b], [1.0, 0.0]])).abs().max().item()
    predicted = 1 - zeta * math.sqrt(lr * wd)
    assert math.log(rate) / math.log(predicted) == pytest.approx(1.0, abs=0.01)


def test_freeze_v_keeps_the_metric_and_floor_bounds_the_step():
    w = torch.zeros(3, requires_grad=True)
    opt = AdamCDM([w], lr=1e-3, weight_decay=1.0, freeze_v=True, v_floor=1.0)
    w.grad = torch.tensor([1.0, 2.0, 0.0])
    opt.step()  # no metric yet: the first gradient starts it
    v1 = opt.state[w]["exp_avg_sq"].clone()
    assert torch.allclose(v1, 0.02 * torch.tensor([1.0, 4.0, 0.0]))
    for _ in range(5):
        w.grad = torch.tensor([10.0, 10.0, 10.0])
        opt.step()
    assert torch.equal(opt.state[w]["exp_avg_sq"], v1)
    assert opt.state[w]["step"] == 1


def test_state_dict_round_trip():
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(4, generator=gen) for _ in range(12)]
    a = torch.ones(4, requires_grad=True)
    opt = AdamCDM([a], lr=1e-2, weight_decay=1.0)
    for g in grads[:6]:
        a.grad = g.clone()
        opt.step()
    b = a.detach().clone().requires_grad_()
    opt2 = AdamCDM([b], lr=1e-2, weight_decay=1.0)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for g in grads[6:]:
        for p, o in ((a, opt), (b, opt2)):
            p.grad = g.clone()
            o.step()
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"lr": 0.0}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"weight_decay": 0.0}, "weight_decay > 0"),
        ({"damping": 0.0}, "damping"),
        ({"beta2": 1.0}, "beta2"),
        ({"eps": -1.0}, "eps"),
        ({"v_floor": -1.0}, "v_floor"),
    ],
)
def test_invalid_arguments(kwargs, name):
    args = {"lr": 1e-3, "weight_decay": 1.0, **kwargs}
    with pytest.raises(ValueError, match=name):
        AdamCDM([torch.zeros(2, requires_grad=True)], **args)


def _old_adam_cdm_step(p, g, state, lr, wd, beta, beta2=0.98, eps=1e-8):
    """The arithmetic of AdamCDM before it shared CDM's core (kept to pin its numbers)."""
    v = state.setdefault("v", torch.zeros_like(p))
    state["t"] = state.get("t", 0) + 1
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = v.div(1 - beta2 ** state["t"]).sqrt_().add_(eps)
    d = g.div(denom)
    d.add_(p, alpha=wd)
    if "buf" not in state:
        state["buf"] = d
    else:
        state["buf"].mul_(beta).add_(d)
    p.add_(state["buf"], alpha=-lr)


@pytest.mark.parametrize("foreach", [False, True])
def test_numbers_at_explicit_lr_and_wd_are_those_of_the_previous_implementation(foreach):
    gen = torch.Generator().manual_seed(3)
    shapes = [(5, 3), (7,)]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(25)]
    ps = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    ref = [p.detach().clone() for p in ps]
    opt = AdamCDM(ps, lr=2e-4, weight_decay=5.0, foreach=foreach)
    beta = critical_momentum(2e-4, 5.0)
    states = [{} for _ in shapes]
    for gs in grads:
        for p, r, g, st in zip(ps, ref, gs, states, strict=True):
            p.grad = g.clone()
            _old_adam_cdm_step(r, g, st, 2e-4, 5.0, beta)
        opt.step()
    for p, r in zip(ps, ref, strict=True):
        assert torch.equal(p.detach(), r)  # bit for bit


def test_nesterov_maximize_and_momentum_follow_cdm():
    """With beta2 -> a constant metric (v frozen at 1), AdamCDM is CDM on g/(1 + eps)."""
    from groktimizer import CDM

    gen = torch.Generator().manual_seed(4)
    grads = [torch.randn(6, generator=gen, dtype=torch.float64) for _ in range(10)]
    for kw in ({"nesterov": True}, {"maximize": True}, {"momentum": 0.5, "weight_decay": 0.0}):
        kw = {"lr": 1e-2, "weight_decay": 0.5, **kw}
        a = torch.ones(6, dtype=torch.float64, requires_grad=True)
        b = a.detach().clone().requires_grad_()
        opt_a = AdamCDM([a], freeze_v=True, eps=0.0, **kw)
        opt_a.state[a]["exp_avg_sq"] = torch.full_like(a, 1 - 0.98)  # v_hat = 1 at step 1
        opt_a.state[a]["step"] = 1
        opt_b = CDM([b], **kw)
        for g in grads:
            a.grad, b.grad = g.clone(), g.clone()
            opt_a.step()
            opt_b.step()
        assert torch.allclose(a, b, rtol=0, atol=1e-13), kw
        assert opt_a.param_groups[0]["momentum_used"] == opt_b.param_groups[0]["momentum_used"]


def test_foreach_default_follows_torch():
    """On CPU tensors torch's own optimizers do not default to foreach; neither does AdamCDM."""
    from torch.optim.optimizer import _default_to_fused_or_foreach

    w = torch.zeros(3, requires_grad=True)
    expected = _default_to_fused_or_foreach([w], differentiable=False)[1]
    opt = AdamCDM([w], lr=1e-3, weight_decay=1.0)
    calls = []
    import groktimizer.adam_cdm as mod

    real = mod.precondition

    def spy(*args, **kwargs):
        calls.append(kwargs["foreach"])
        return real(*args, **kwargs)

    mod.precondition = spy
    try:
        w.grad = torch.ones(3)
        opt.step()
    finally:
        mod.precondition = real
    assert calls == [expected]


def test_preconditioner_is_inverse_sqrt_of_the_denominator():
    w = torch.zeros(3, requires_grad=True)
    opt = AdamCDM([w], lr=1e-3, weight_decay=1.0, eps=0.0)
    assert opt.preconditioner() == [None]
    w.grad = torch.tensor([1.0, 4.0, 0.5])
    opt.step()
    (s,) = opt.preconditioner()
    assert torch.allclose(s, w.grad.abs().rsqrt())  # v_hat = g^2 after one step
