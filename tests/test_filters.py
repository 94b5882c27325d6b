import copy

import pytest
import torch

from groktimizer import FilteredOptimizer, GradFilterEMA, GradFilterMA


def _grads(n, shape=(3, 2), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(n)]


def test_ema_filter_equals_reference_formula():
    alpha, lamb = 0.9, 2.0
    gs = _grads(8)
    p = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    filt = GradFilterEMA(alpha=alpha, lamb=lamb)
    ema = gs[0].clone()  # the reference starts the average at the first gradient
    for g in gs:
        ema = alpha * ema + (1 - alpha) * g
        p.grad = g.clone()
        filt.apply([p])
        assert torch.allclose(p.grad, g + lamb * ema, rtol=0, atol=1e-14)


@pytest.mark.parametrize("filter_type", ["mean", "sum"])
def test_ma_filter_warmup_then_window(filter_type):
    window, lamb = 3, 5.0
    gs = _grads(7, seed=1)
    p = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    filt = GradFilterMA(window=window, lamb=lamb, filter_type=filter_type, warmup=True)
    for t, g in enumerate(gs):
        p.grad = g.clone()
        filt.apply([p])
        if t < window - 1:
            assert torch.equal(p.grad, g)  # window not yet full: untouched
        else:
            last = torch.stack(gs[t - window + 1 : t + 1]).sum(0)
            avg = last / window if filter_type == "mean" else last
            assert torch.allclose(p.grad, g + lamb * avg, rtol=0, atol=1e-12)


def test_ma_without_warmup_filters_from_the_first_step():
    gs = _grads(2, seed=2)
    p = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    filt = GradFilterMA(window=10, lamb=1.0, warmup=False)
    p.grad = gs[0].clone()
    filt.apply([p])
    assert torch.allclose(p.grad, 2 * gs[0])
    p.grad = gs[1].clone()
    filt.apply([p])
    assert torch.allclose(p.grad, gs[1] + (gs[0] + gs[1]) / 2)


def test_filters_keep_raw_gradients_even_when_grads_are_zeroed_in_place():
    # Amplified gradients must not feed back, and zero_grad(set_to_none=False) must not wipe
    # the stored history.
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    filt = GradFilterMA(window=2, lamb=1.0, warmup=True)
    for g in ([1.0, 1.0], [3.0, 3.0], [5.0, 5.0]):
        if p.grad is None:
            p.grad = torch.tensor(g, dtype=torch.float64)
        else:
            p.grad.zero_()
            p.grad.add_(torch.tensor(g, dtype=torch.float64))
        filt.apply([p])
    assert torch.allclose(p.grad, torch.tensor([5.0 + 4.0, 5.0 + 4.0], dtype=torch.float64))


def test_filtered_optimizer_applies_filter_before_step_and_resumes():
    gs = _grads(10, seed=3)

    def run(steps, state=None, p0=None):
        p = (torch.ones(3, 2, dtype=torch.float64) if p0 is None else p0).requires_grad_()
        opt = FilteredOptimizer(torch.optim.SGD([p], lr=0.1), GradFilterEMA(alpha=0.8, lamb=1.5))
        if state is not None:
            opt.load_state_dict(state)
        for g in steps:
            opt.zero_grad()
            p.grad = g.clone()
            opt.step()
        return p, opt

    # reference: SGD on the filtered gradient
    w, ema = torch.ones(3, 2, dtype=torch.float64), gs[0].clone()
    for g in gs:
        ema = 0.8 * ema + 0.2 * g
        w = w - 0.1 * (g + 1.5 * ema)
    full, _ = run(gs)
    assert torch.allclose(full.detach(), w, rtol=0, atol=1e-12)

    half, opt = run(gs[:5])
    state = copy.deepcopy(opt.state_dict())
    resumed, _ = run(gs[5:], state=state, p0=half.detach().clone())
    assert torch.equal(resumed, full)


def test_filtered_optimizer_works_with_lr_scheduler():
    p = torch.ones(2, requires_grad=True)
    opt = FilteredOptimizer(torch.optim.SGD([p], lr=1.0), GradFilterEMA())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    p.grad = torch.zeros(2)
    opt.step()
    sched.step()
    assert opt.optimizer.param_groups[0]["lr"] == 0.5


def test_ma_state_dict_round_trip():
    gs = _grads(6, seed=4)
    a = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    f = GradFilterMA(window=4, lamb=2.0)
    for g in gs[:3]:
        a.grad = g.clone()
        f.apply([a])
    f2 = GradFilterMA()
    f2.load_state_dict(copy.deepcopy(f.state_dict()))
    for g in gs[3:]:
        a.grad = g.clone()
        f.apply([a])
        out1 = a.grad.clone()
        a.grad = g.clone()
        f2.apply([a])
        assert torch.equal(a.grad, out1)


@pytest.mark.parametrize(
    "build,name",
    [
        (lambda: GradFilterEMA(alpha=1.0), "alpha"),
        (lambda: GradFilterEMA(lamb=float("nan")), "lamb"),
        (lambda: GradFilterMA(window=0), "window"),
        (lambda: GradFilterMA(filter_type="median"), "filter_type"),
        (lambda: FilteredOptimizer("sgd", GradFilterEMA()), "optimizer"),
    ],
)
def test_invalid_arguments(build, name):
    with pytest.raises(ValueError, match=name):
        build()
