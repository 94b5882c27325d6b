"""Tests for groktimizer.theory: formulas, stability bounds and the quadratic-model simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from groktimizer.theory import (
    LINEAR_METHODS,
    LinearRegressionProblem,
    critical_momentum,
    fit_loglog_slope,
    flat_mode_rate,
    gd_rate,
    heavy_ball_rate,
    heavy_ball_stable,
    nesterov_rate,
    nesterov_stable,
    safe_lr,
    speedup_table,
    steps_to_tolerance,
)

LAMS = (1e-2, 1e-3, 1e-4, 1e-5)


@pytest.fixture(scope="module")
def problem() -> LinearRegressionProblem:
    return LinearRegressionProblem()  # n=50, d=500, seed 0


@pytest.fixture(scope="module")
def table(problem):
    return speedup_table(LAMS, methods=LINEAR_METHODS, problem=problem)


# -- formulas ------------------------------------------------------------------------------------
def test_critical_momentum_hand_values():
    # η = 1, λ = 1e-2: √(ηλ) = 0.1
    assert critical_momentum(1.0, 1e-2) == pytest.approx(0.81, abs=1e-15)
    assert critical_momentum(1.0, 1e-2, damping=0.5) == pytest.approx(0.9025, abs=1e-15)
    assert critical_momentum(1.0, 1e-2, damping=2.0) == pytest.approx(0.64, abs=1e-15)
    assert critical_momentum(1.0, 1e-2, nesterov=True) == pytest.approx(0.9 / 1.1, abs=1e-15)
    # η = 0.04, λ = 1: √(ηλ) = 0.2, ζ = 0.5 → 0.1
    assert critical_momentum(0.04, 1.0, damping=0.5, nesterov=True) == pytest.approx(0.9 / 1.1)
    # ζ√(ηλ) ≥ 1: clipped to plain gradient descent, never a negative momentum
    assert critical_momentum(1.0, 1.0, damping=3.0) == 0.0
    assert critical_momentum(1.0, 1.0, damping=3.0, nesterov=True) == 0.0


@pytest.mark.parametrize("lr,lam", [(1.0, 1e-2), (0.06, 1e-5), (0.5, 3e-3)])
def test_critical_double_root_rate(lr, lam):
    s = math.sqrt(lr * lam)
    beta = critical_momentum(lr, lam)
    # the root solver on a double root: rounding of β moves it by ~√u·s (see heavy_ball_rate)
    assert heavy_ball_rate(lr, lam, beta) == pytest.approx(1 - s, abs=1e-9)
    assert flat_mode_rate(lr, lam) == pytest.approx(1 - s, abs=1e-15)
    # Nesterov with β_N has the same double root 1 − √(ηλ) (to rounding of a double root)
    assert flat_mode_rate(lr, lam, nesterov=True) == pytest.approx(1 - s, abs=1e-7)
    assert nesterov_rate(lr, lam, critical_momentum(lr, lam, nesterov=True)) == pytest.approx(
        1 - s, abs=1e-7
    )


@pytest.mark.parametrize("damping", [0.1, 0.5, 0.9])
def test_under_damped_rate_is_sqrt_beta(damping):
    lr, lam = 0.5, 1e-3
    beta = critical_momentum(lr, lam, damping)
    expected = 1 - damping * math.sqrt(lr * lam)
    assert math.sqrt(beta) == pytest.approx(expected, abs=1e-15)
    assert flat_mode_rate(lr, lam, damping) == pytest.approx(expected, abs=1e-14)


def test_over_damped_rate_is_larger_real_root():
    lr, lam, damping = 1.0, 1e-2, 2.0
    beta = critical_momentum(lr, lam, damping)
    roots = np.roots([1.0, -(1 + beta - lr * lam), beta])
    assert np.all(np.isreal(roots))
    assert flat_mode_rate(lr, lam, damping) == pytest.approx(np.abs(roots).max(), abs=1e-14)
    assert flat_mode_rate(lr, lam, damping) > 1 - math.sqrt(lr * lam)  # slower than critical


def test_rate_equals_measured_contraction():
    """The rate is the asymptotic per-step factor of the actual heavy-ball iteration."""
    lr, lam, damping = 1.0, 1e-2, 0.7
    beta = critical_momentum(lr, lam, damping)
    x_prev = x = 1.0
    amps = []
    for _ in range(600):
        x, x_prev = (1 + beta - lr * lam) * x - beta * x_prev, x
        amps.append(math.hypot(x, x_prev))
    measured = (amps[-1] / amps[-301]) ** (1 / 300)
    assert measured == pytest.approx(flat_mode_rate(lr, lam, damping), rel=1e-2)
    assert gd_rate(0.5, 1.0) == 0.5 and gd_rate(0.5, 3.0) == 0.5


def test_steps_to_tolerance():
    assert steps_to_tolerance(0.9, 1e-3) == math.ceil(math.log(1e3) / math.log(1 / 0.9)) == 66


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.999])
def test_stability_bounds_at_the_boundary(beta):
    lr = 1.0
    hb, nv = 2 * (1 + beta), (2 + 2 * beta) / (1 + 2 * beta)
    assert heavy_ball_stable(lr, hb * (1 - 1e-9), beta)
    assert not heavy_ball_stable(lr, hb, beta)
    assert not heavy_ball_stable(lr, hb * (1 + 1e-9), beta)
    assert not heavy_ball_stable(lr, 0.0, beta)
    assert nesterov_stable(lr, nv * (1 - 1e-9), beta)
    assert not nesterov_stable(lr, nv * (1 + 1e-9), beta)
    # the bounds agree with the spectral radius crossing 1
    assert heavy_ball_rate(lr, hb * (1 - 1e-6), beta) < 1 < heavy_ball_rate(lr, hb * 1.01, beta)
    assert nesterov_rate(lr, nv * (1 - 1e-6), beta) < 1 < nesterov_rate(lr, nv * 1.01, beta)


def test_safe_lr():
    assert safe_lr(9.0, 1.0) == pytest.approx(0.1)
    assert safe_lr(9.0, 1.0, safety=0.5) == pytest.approx(0.05)
    lr = safe_lr(16.7, 1e-3)
    assert heavy_ball_stable(lr, 16.7 + 1e-3, 0.99) and nesterov_stable(lr, 16.7 + 1e-3, 0.99)


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: critical_momentum(0.0, 1e-3), "lr"),
        (lambda: critical_momentum(-1.0, 1e-3), "lr"),
        (lambda: critical_momentum(0.1, 0.0), "weight_decay"),
        (lambda: critical_momentum(0.1, float("nan")), "weight_decay"),
        (lambda: critical_momentum(0.1, 1e-3, damping=0.0), "damping"),
        (lambda: heavy_ball_rate(0.1, 1.0, 1.0), "momentum"),
        (lambda: heavy_ball_rate(0.1, float("inf"), 0.5), "curvature"),
        (lambda: nesterov_stable(0.0, 1.0, 0.5), "lr"),
        (lambda: steps_to_tolerance(1.0, 1e-3), "rate"),
        (lambda: steps_to_tolerance(0.9, 0.0), "eps"),
        (lambda: safe_lr(0.0), "h_max"),
        (lambda: safe_lr(1.0, -1.0), "weight_decay"),
        (lambda: safe_lr(1.0, 0.0, safety=0.0), "safety"),
        (lambda: LinearRegressionProblem(n=50, d=50), "d"),
        (lambda: LinearRegressionProblem(n=4, d=8, init_scale=0), "init_scale"),
        (lambda: LinearRegressionProblem(n=4, d=8).steps_to_relative_error("sgd", 1e-2), "method"),
        (lambda: LinearRegressionProblem(n=4, d=8).steps_to_relative_error("gd", 0.0), "lam"),
        (lambda: LinearRegressionProblem(n=4, d=8).steps_to_relative_error("gd", 1e-2, 2.0), "eps"),
        (lambda: LinearRegressionProblem(n=4, d=8).explicit_run("gd", 1e-2, 3, "jax"), "backend"),
        (lambda: fit_loglog_slope([1e-2], [10]), "lams"),
    ],
)
def test_invalid_arguments_name_themselves(call, name):
    with pytest.raises(ValueError, match=rf"^Invalid {name}\b"):
        call()


# -- simulator -----------------------------------------------------------------------------------
def test_ridge_target_is_exact(problem):
    X, y, n = problem.X, problem.y, problem.n
    for lam in LAMS:
        w_lam = problem.ridge_solution(lam)
        direct = X.T @ np.linalg.solve(X @ X.T + n * lam * np.eye(n), y)
        np.testing.assert_allclose(w_lam, direct, rtol=1e-9, atol=1e-12)
        grad = X.T @ (X @ w_lam - y) / n + lam * w_lam  # ∇(L + λ/2‖w‖²) vanishes
        assert np.linalg.norm(grad) < 1e-12
    np.testing.assert_allclose(problem.w_min_norm, np.linalg.pinv(X) @ y, atol=1e-10)
    assert problem.h_max == pytest.approx(np.linalg.eigvalsh(X.T @ X / n)[-1], rel=1e-10)


def test_ridge_target_tends_to_min_norm_interpolant(problem):
    dists = [problem._dist_min_norm(problem.ridge_solution(lam)) for lam in (*LAMS, 1e-8)]
    assert all(a > b for a, b in zip(dists, dists[1:], strict=False))
    # ‖w_λ − w*‖ = O(λ): a decade of λ is a decade of distance
    for a, b in zip(dists[:3], dists[1:4], strict=True):
        assert a / b == pytest.approx(10.0, rel=0.02)
    assert dists[-1] < 1e-8


def test_slopes(table):
    assert table.slopes["gd"] == pytest.approx(-1.0, abs=0.03)
    assert table.slopes["cdm"] == pytest.approx(-0.5, abs=0.03)
    assert table.slopes["nesterov"] == pytest.approx(-0.5, abs=0.03)
    assert table.slopes["heavy_ball"] == pytest.approx(-1.0, abs=0.03)
    gd, hb = table.steps("gd"), table.steps("heavy_ball")
    # fixed β = 0.9 only buys the constant 1/(1 − β) = 10 on the flat mode
    assert all(g / h == pytest.approx(10.0, rel=0.06) for g, h in zip(gd, hb, strict=True))


def test_gd_over_cdm_ratio_grows_as_inverse_sqrt(table, problem):
    """GD/CDM ∝ 1/√(ηλ): each decade of λ multiplies the ratio by √10.

    Tolerance: the asymptotic counts ln(1/ε)/(ηλ) and ~ln(C/ε)/√(ηλ) carry relative corrections of
    order √(ηλ) (discrete-time roots, the steep modes) plus integer rounding 1/steps_cdm; the
    bound used is that sum at the larger λ of each pair (about 3% at λ = 1e-2), and the deviation
    must shrink as λ → 0.
    """
    ratios = [g / c for g, c in zip(table.steps("gd"), table.steps("cdm"), strict=True)]
    devs = []
    for i in range(len(LAMS) - 1):
        rr = ratios[i + 1] / ratios[i]
        lam = LAMS[i]
        tol = math.sqrt(problem.lr(lam) * lam) + 1.0 / table.steps("cdm")[i]
        devs.append(abs(rr / math.sqrt(10) - 1))
        assert devs[-1] < tol, (lam, rr)
    assert devs[-1] < devs[0]


def test_asymptotic_counts(table, problem):
    """GD matches ln(1/ε)/(−ln(1−ηλ)) within 1%; CDM sits between its two bounds."""
    for row in table.rows:
        s = math.sqrt(row.lr * row.lam)
        if row.method == "gd":
            assert row.steps == pytest.approx(steps_to_tolerance(1 - s * s, 1e-3), rel=0.01)
        if row.method == "cdm":
            # at least the pure geometric count; at most that with the double-root factor 1 + ks
            lo = steps_to_tolerance(1 - s, 1e-3)
            k = np.arange(lo, 10 * lo)
            hi = k[(1 - s) ** k * (1 + k * s) <= 1e-3][0]
            assert lo <= row.steps <= hi


@pytest.mark.parametrize("method", LINEAR_METHODS)
def test_closed_form_equals_explicit_iteration(problem, method):
    lam = 1e-2
    res = problem.steps_to_relative_error(method, lam)
    errs, _ = problem.explicit_run(method, lam, res.steps + 3)
    assert int(np.flatnonzero(errs <= 1e-3)[0]) == res.steps
    assert errs[res.steps] == pytest.approx(res.rel_error, abs=1e-12)
    ks = [0, 1, 2, 7, 50, res.steps // 2, res.steps]
    np.testing.assert_allclose(problem.relative_error_at(method, lam, ks), errs[ks], atol=1e-9)


def test_closed_form_equals_explicit_cdm_smaller_lambda():
    small = LinearRegressionProblem(n=20, d=120, seed=3, init_scale=5.0)
    for method in ("cdm", "nesterov", "heavy_ball"):
        res = small.steps_to_relative_error(method, 1e-3)
        errs, _ = small.explicit_run(method, 1e-3, res.steps + 1)
        assert int(np.flatnonzero(errs <= 1e-3)[0]) == res.steps


@pytest.mark.parametrize("method", ["gd", "heavy_ball", "cdm", "nesterov"])
def test_explicit_run_equals_torch_sgd(problem, method):
    """The hand-written CDM/Nesterov loop is torch.optim.SGD(momentum=β, dampening=0, wd=λ)."""
    lam = 1e-3
    e1, w1 = problem.explicit_run(method, lam, 300, backend="manual")
    e2, w2 = problem.explicit_run(method, lam, 300, backend="torch")
    np.testing.assert_allclose(w1, w2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(e1, e2, rtol=0, atol=1e-12)


def test_not_reached_is_reported_not_dropped():
    small = LinearRegressionProblem(n=10, d=60, seed=1)
    gd = small.steps_to_relative_error("gd", 1e-3, max_steps=100)
    assert gd.steps is None and not gd.reached and gd.rel_error > 1e-3 and gd.max_steps == 100
    # the reported error at the cap is the true error there
    errs, _ = small.explicit_run("gd", 1e-3, 100)
    assert gd.rel_error == pytest.approx(errs[100], abs=1e-12)
    tab = speedup_table((1e-2, 1e-3), methods=("cdm", "adamw"), problem=small, adamw_steps=300)
    adamw = [r for r in tab.rows if r.method == "adamw"]
    assert len(adamw) == 2 and all(not r.reached and r.steps is None for r in adamw)
    assert all(r.min_rel_error > 1e-3 and r.max_steps == 300 for r in adamw)
    assert math.isnan(tab.slopes["adamw"]) and not math.isnan(tab.slopes["cdm"])


def test_adamw_is_torch_adamw_decoupled():
    small = LinearRegressionProblem(n=10, d=60, seed=2)
    lam, lr = 1e-2, 0.05
    errs, w = small.explicit_run("adamw", lam, 50, adamw_lr=lr)
    p = torch.nn.Parameter(torch.from_numpy(small.w0.copy()))
    opt = torch.optim.AdamW([p], lr=lr, weight_decay=lam)
    X, y = torch.from_numpy(small.X), torch.from_numpy(small.y)
    for _ in range(50):
        p.grad = X.T @ (X @ p.detach() - y) / small.n
        opt.step()
    np.testing.assert_allclose(w, p.detach().numpy(), atol=1e-14)
