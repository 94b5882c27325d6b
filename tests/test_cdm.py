import copy
import math
import subprocess
import sys

import pytest
import torch

from groktimizer import CDM, critical_momentum


def _problem(kind: str, seed: int):
    """A random regression problem: returns (params, loss_fn(params))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=g, dtype=torch.float64)
    y = torch.randn(32, 3, generator=g, dtype=torch.float64)
    if kind == "linear":
        params = [torch.randn(8, 3, generator=g, dtype=torch.float64)]

        def loss_fn(ps):
            return ((x @ ps[0] - y) ** 2).mean()

    else:
        params = [
            torch.randn(8, 16, generator=g, dtype=torch.float64) / 3,
            torch.zeros(16, dtype=torch.float64),
            torch.randn(16, 3, generator=g, dtype=torch.float64) / 4,
            torch.zeros(3, dtype=torch.float64),
        ]

        def loss_fn(ps):
            return ((torch.tanh(x @ ps[0] + ps[1]) @ ps[2] + ps[3] - y) ** 2).mean()

    return params, loss_fn


def _run(make_opt, params, loss_fn, steps):
    ps = [p.clone().requires_grad_() for p in params]
    opt = make_opt(ps)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(ps).backward()
        opt.step()
    return ps, opt


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize(
    "lr,wd,zeta", [(0.05, 1e-2, 1.0), (0.1, 1e-3, 0.5), (0.02, 0.1, 2.0), (0.3, 1e-4, 0.25)]
)
def test_cdm_equals_sgd_with_critical_momentum(kind, lr, wd, zeta):
    params, loss_fn = _problem(kind, seed=int(1000 * lr + 7 * zeta))
    beta = critical_momentum(lr, wd, zeta)
    ref, _ = _run(
        lambda ps: torch.optim.SGD(ps, lr=lr, momentum=beta, dampening=0, weight_decay=wd),
        params,
        loss_fn,
        200,
    )
    for foreach in (False, True):
        got, opt = _run(
            lambda ps: CDM(ps, lr=lr, weight_decay=wd, damping=zeta, foreach=foreach),  # noqa: B023
            params,
            loss_fn,
            200,
        )
        assert opt.param_groups[0]["momentum_used"] == beta
        dev = max((a - b).abs().max().item() for a, b in zip(got, ref, strict=True))
        assert dev <= 1e-6, (foreach, dev)
        moved = max((a - p).abs().max().item() for a, p in zip(got, params, strict=True))
        assert moved > 1e-3  # the comparison is not between two parameters that never moved


@pytest.mark.parametrize("foreach", [False, True])
def test_nesterov_equals_sgd_nesterov_with_beta_n(foreach):
    lr, wd, zeta = 0.05, 1e-2, 1.0
    params, loss_fn = _problem("mlp", seed=3)
    s = zeta * math.sqrt(lr * wd)
    beta_n = (1 - s) / (1 + s)
    assert critical_momentum(lr, wd, zeta, nesterov=True) == pytest.approx(beta_n, rel=1e-15)
    ref, _ = _run(
        lambda ps: torch.optim.SGD(ps, lr=lr, momentum=beta_n, weight_decay=wd, nesterov=True),
        params,
        loss_fn,
        200,
    )
    got, _ = _run(
        lambda ps: CDM(ps, lr=lr, weight_decay=wd, damping=zeta, nesterov=True, foreach=foreach),
        params,
        loss_fn,
        200,
    )
    for a, b in zip(got, ref, strict=True):
        assert (a - b).abs().max().item() <= 1e-6


def test_foreach_and_single_tensor_paths_are_identical():
    params, loss_fn = _problem("mlp", seed=11)
    a, _ = _run(lambda ps: CDM(ps, lr=0.1, weight_decay=1e-2, foreach=False), params, loss_fn, 50)
    b, _ = _run(lambda ps: CDM(ps, lr=0.1, weight_decay=1e-2, foreach=True), params, loss_fn, 50)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def _fitted_spectral_radius(xs: torch.Tensor) -> float:
    """Fit x_{k+1} = c·x_k − b·x_{k−1} to a trajectory; return max |root| of z² − cz + b."""
    A = torch.stack([xs[1:-1], -xs[:-2]], dim=1)
    c, b = torch.linalg.lstsq(A, xs[2:, None]).solution.flatten().tolist()
    roots = torch.linalg.eigvals(torch.tensor([[c, -b], [1.0, 0.0]], dtype=torch.float64))
    return roots.abs().max().item()


@pytest.mark.parametrize("zeta", [0.25, 0.5, 1.0])
def test_flat_mode_contracts_at_one_minus_zeta_sqrt_eta_lambda(zeta):
    # 1-D quadratic of curvature λ coming only from the decay: the loss gradient is 0.
    lr, wd = 1.0, 1e-2
    w = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = CDM([w], lr=lr, weight_decay=wd, damping=zeta)
    xs = [w.item()]
    for _ in range(300):
        w.grad = torch.zeros_like(w)
        opt.step()
        xs.append(w.item())
    measured = _fitted_spectral_radius(torch.tensor(xs[5:], dtype=torch.float64))
    predicted = 1 - zeta * math.sqrt(lr * wd)
    # Compare the exponents (−log r): 1% of the rate itself would not even tell GD from CDM.
    assert math.log(measured) / math.log(predicted) == pytest.approx(1.0, abs=0.01)
    # And the trajectory really has decayed like predicted^k (up to the double-root factor k).
    assert abs(xs[-1]) <= 5 * 300 * predicted**300
    assert abs(xs[-1]) < 0.1 * (1 - lr * wd) ** 300  # far below plain GD


def test_lr_scheduler_moves_beta():
    lr, wd = 0.5, 1e-2
    params, loss_fn = _problem("linear", seed=5)
    ps = [p.clone().requires_grad_() for p in params]
    qs = [p.clone().requires_grad_() for p in params]
    opt = CDM(ps, lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.1)
    ref = torch.optim.SGD(qs, lr=lr, momentum=critical_momentum(lr, wd), weight_decay=wd)
    betas = set()
    for _ in range(30):
        for p, o in ((ps, opt), (qs, ref)):
            o.zero_grad()
            loss_fn(p).backward()
            o.step()
        betas.add(opt.param_groups[0]["momentum_used"])
        sched.step()
        new_lr = opt.param_groups[0]["lr"]
        ref.param_groups[0]["lr"] = new_lr
        ref.param_groups[0]["momentum"] = critical_momentum(new_lr, wd)
    assert sorted(betas) == pytest.approx(
        sorted({critical_momentum(lr * 0.1**k, wd) for k in range(3)}), rel=1e-12
    )
    for a, b in zip(ps, qs, strict=True):
        assert torch.equal(a, b)


def test_explicit_momentum_overrides_and_allows_zero_weight_decay():
    params, loss_fn = _problem("linear", seed=9)
    ref, _ = _run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), params, loss_fn, 40)
    got, opt = _run(lambda ps: CDM(ps, lr=0.1, weight_decay=0.0, momentum=0.9), params, loss_fn, 40)
    assert opt.param_groups[0]["momentum_used"] == 0.9
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a, b)


def test_group_without_decay_uses_default_momentum_and_is_not_decayed():
    w = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    opt = CDM([{"params": [w]}, {"params": [b], "weight_decay": 0.0}], lr=1.0, weight_decay=1e-2)
    beta = critical_momentum(1.0, 1e-2)
    for _ in range(5):
        w.grad, b.grad = torch.zeros(3), torch.zeros(3)
        opt.step()
    assert [g["momentum_used"] for g in opt.param_groups] == [beta, beta]
    assert torch.equal(b, torch.ones(3))  # no loss gradient and no decay: b stays
    assert (w < 1).all()


def test_closure_and_maximize():
    params, loss_fn = _problem("linear", seed=2)
    ps = [p.clone().requires_grad_() for p in params]
    qs = [p.clone().requires_grad_() for p in params]
    opt = CDM(ps, lr=0.1, weight_decay=1e-2, maximize=True)
    ref = torch.optim.SGD(
        qs, lr=0.1, momentum=critical_momentum(0.1, 1e-2), weight_decay=1e-2, maximize=True
    )

    def closure():
        opt.zero_grad()
        loss = -loss_fn(ps)
        loss.backward()
        return loss

    for _ in range(10):
        loss = opt.step(closure)
        ref.zero_grad()
        (-loss_fn(qs)).backward()
        ref.step()
    assert torch.is_tensor(loss)
    assert torch.equal(ps[0], qs[0])


def test_state_dict_round_trip_continues_identically():
    params, loss_fn = _problem("mlp", seed=4)
    ps = [p.clone().requires_grad_() for p in params]
    opt = CDM(ps, lr=0.1, weight_decay=1e-2, damping=0.5)
    for _ in range(10):
        opt.zero_grad()
        loss_fn(ps).backward()
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    qs = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = CDM(qs, lr=0.1, weight_decay=1e-2, damping=0.5)
    opt2.load_state_dict(saved)
    assert "momentum_buffer" in opt2.state[qs[0]]
    for _ in range(10):
        for p, o in ((ps, opt), (qs, opt2)):
            o.zero_grad()
            loss_fn(p).backward()
            o.step()
    for a, b in zip(ps, qs, strict=True):
        assert torch.equal(a, b)


NO_WD = "CDM needs weight_decay > 0 to set the critical momentum"


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"lr": 0.0, "weight_decay": 1e-2}, "lr"),
        ({"lr": -1.0, "weight_decay": 1e-2}, "lr"),
        ({"lr": float("nan"), "weight_decay": 1e-2}, "lr"),
        ({"lr": "auto", "weight_decay": 1e-2}, "lr"),
        ({"lr": 0.1, "weight_decay": -1e-3}, "weight_decay"),
        ({"lr": 0.1, "weight_decay": 1e-2, "damping": 0.0}, "damping"),
        ({"lr": 0.1, "weight_decay": 1e-2, "damping": -1.0}, "damping"),
        ({"lr": 0.1, "weight_decay": 1e-2, "momentum": 1.0}, "momentum"),
        ({"lr": 0.1, "weight_decay": 1e-2, "momentum": -0.1}, "momentum"),
        ({"lr": 0.1, "weight_decay": 0.0}, NO_WD),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name) as err:
        CDM([torch.zeros(2, requires_grad=True)], **kwargs)
    assert "\n" not in str(err.value)


def test_invalid_group_value_is_rejected():
    with pytest.raises(ValueError, match="damping"):
        CDM([{"params": [torch.zeros(2, requires_grad=True)], "damping": 0}], 0.1, 1e-2)


def test_library_import_leaves_pipeline_packages_out():
    code = (
        "import sys, groktimizer\n"
        "bad = [m for m in ('hydra', 'wandb', 'datasets', 'omegaconf') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_foreach_groups_mixed_dtypes_like_single_tensor():
    gen = torch.Generator().manual_seed(5)
    dtypes = [torch.float32, torch.float64, torch.float32]
    grads = [[torch.randn(4, generator=gen).to(dt) for dt in dtypes] for _ in range(12)]
    out = []
    for foreach in (False, True):
        ps = [torch.ones(4, dtype=dt, requires_grad=True) for dt in dtypes]
        opt = CDM(ps, lr=0.1, weight_decay=1e-2, nesterov=True, foreach=foreach)
        for gs in grads:
            for p, g in zip(ps, gs, strict=True):
                p.grad = g.clone()
            opt.step()
        out.append([p.detach() for p in ps])
    for a, b in zip(*out, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
