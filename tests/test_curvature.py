import pytest
import torch

from groktimizer import auto_lr, hvp, lanczos_top_eigenvalues, top_eigenvalue


def _quadratic(eigs, seed=0):
    """L(w) = ½ wᵀHw + bᵀw with H = Q diag(eigs) Qᵀ; returns (H, w, loss_fn)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(eigs)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    H = q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    w = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)
    return H, w, lambda: 0.5 * w @ H @ w + b @ w


def test_hvp_equals_explicit_hessian_times_v():
    H, w, loss_fn = _quadratic([5.0, 2.0, 1.0, 0.5, 0.0])
    v = torch.randn(5, dtype=torch.float64)
    (hv,) = hvp(loss_fn, [w], [v])
    assert torch.allclose(hv, H @ v, atol=1e-12)
    assert w.grad is None  # nothing leaks into .grad


def test_hvp_on_mlp_matches_torch_func_hessian():
    torch.manual_seed(0)
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    u = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def f(w_, u_):
        return ((torch.tanh(x @ w_) @ u_ - y) ** 2).mean()

    v = [torch.randn(3, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    got = hvp(lambda: f(w, u), [w, u], v)
    flat = lambda a, b: f(a.reshape(3, 4), b)  # noqa: E731
    Hfull = torch.autograd.functional.hessian(flat, (w.detach().flatten(), u.detach()))
    vw, vu = v[0].flatten(), v[1]
    ref_w = Hfull[0][0] @ vw + Hfull[0][1] @ vu
    ref_u = Hfull[1][0] @ vw + Hfull[1][1] @ vu
    assert torch.allclose(got[0].flatten(), ref_w, atol=1e-10)
    assert torch.allclose(got[1], ref_u, atol=1e-10)


def test_power_iteration_finds_the_top_eigenvalue():
    eigs = [9.7, 4.0, 2.0, 1.0, 0.1, 0.0, 0.0]
    _, w, loss_fn = _quadratic(eigs, seed=1)
    eig, iters = top_eigenvalue(loss_fn, [w], iters=200, tol=1e-8)
    assert eig == pytest.approx(9.7, rel=1e-3)
    assert iters < 200  # stopped on the tolerance, not the budget


def test_power_iteration_respects_its_budget():
    _, w, loss_fn = _quadratic([1.0, 0.999, 0.5], seed=2)
    _, iters = top_eigenvalue(loss_fn, [w], iters=3, tol=1e-12)
    assert iters == 3


def test_lanczos_top_eigenvalues():
    eigs = [10.0, 9.9, 7.0, 3.0, 1.0, 0.5, 0.2, 0.1]
    _, w, loss_fn = _quadratic(eigs, seed=3)
    top = lanczos_top_eigenvalues(loss_fn, [w], k=3, iters=8)
    assert top == pytest.approx([10.0, 9.9, 7.0], rel=1e-6)


def test_auto_lr_formula_and_validation():
    assert auto_lr(9.0, 1.0, safety=0.5) == pytest.approx(0.05)
    assert auto_lr(-9.0, 1.0, safety=1.0) == pytest.approx(0.1)  # largest |curvature|
    with pytest.raises(ValueError, match="safety"):
        auto_lr(1.0, 0.1, safety=0.0)
    with pytest.raises(ValueError, match="h_max"):
        auto_lr(0.0, 0.0)
