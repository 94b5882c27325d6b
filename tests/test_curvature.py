import pytest
import torch

from groktimizer import auto_lr, hvp, lanczos_top_eigenvalues, top_eigenpair, top_eigenvalue
from groktimizer.curvature import DoubleBackwardError


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


def _mlp_probe(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 48),
        torch.nn.Tanh(),
        torch.nn.Linear(48, 48),
        torch.nn.Tanh(),
        torch.nn.Linear(48, 5),
    )
    x, y = torch.randn(64, 8), torch.randint(0, 5, (64,))
    params = list(model.parameters())
    scale = [torch.rand_like(p) + 0.5 for p in params]  # a diagonal metric, as AdamCDM's S
    loss = lambda: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731
    return loss, params, scale


def test_lanczos_without_its_basis_finds_the_same_top_pair():
    """Above the memory budget the probe keeps three vectors (three-term recurrence) and builds
    the Ritz vector by a second pass: the same top eigenpair, twice the products."""
    eigs = [12.0, 11.5, 6.0, *[1.0 / k for k in range(1, 60)]]
    H, w, loss_fn = _quadratic(eigs, seed=4)
    top = torch.linalg.eigh(H).eigenvectors[:, -1]
    theta_full, (v_full,), n_full = top_eigenpair(loss_fn, [w], iters=25)
    theta, (v,), n = top_eigenpair(loss_fn, [w], iters=25, basis_bytes=0)
    assert theta == pytest.approx(12.0, rel=1e-8) and theta_full == pytest.approx(12.0, rel=1e-8)
    assert n == 2 * n_full
    assert abs(float(v @ top)) == pytest.approx(1.0, abs=1e-6)
    assert abs(float(v_full @ top)) == pytest.approx(1.0, abs=1e-6)
    assert lanczos_top_eigenvalues(loss_fn, [w], k=1, iters=25, basis_bytes=0) == pytest.approx(
        [12.0], rel=1e-8
    )
    # a float32 MLP in a diagonal metric: the float32 recurrence against the float64 basis
    loss, params, scale = _mlp_probe()
    h_full, vec_full, _ = top_eigenpair(loss, params, iters=20, scale=scale)
    h, vec, _ = top_eigenpair(loss, params, iters=20, scale=scale, basis_bytes=0)
    assert h == pytest.approx(h_full, rel=1e-4)
    cos = sum(float((a.double() * b.double()).sum()) for a, b in zip(vec, vec_full, strict=True))
    assert abs(cos) > 0.999
    assert all(p.grad is None for p in params)
    with pytest.raises(ValueError, match="basis_bytes must be None or an int >= 0, got -1"):
        top_eigenpair(loss, params, iters=5, basis_bytes=-1)


def test_the_probe_keeps_its_basis_only_within_the_budget(monkeypatch):
    """The budget decides: at 20 iterations 1 GiB holds 6.7M float64 parameters' vectors."""
    from groktimizer import curvature

    loss, params, scale = _mlp_probe(1)
    numel = sum(p.numel() for p in params)
    seen = []
    real = curvature._lanczos

    def spy(apply, q, iters, full=True, visit=None):
        seen.append((full, q.dtype))
        return real(apply, q, iters, full, visit)

    assert curvature.LANCZOS_BASIS_BYTES == 2**30
    assert curvature._keeps_basis(20, 6_710_886, None)
    assert not curvature._keeps_basis(20, 6_710_887, None)
    monkeypatch.setattr(curvature, "_lanczos", spy)
    top_eigenpair(loss, params, iters=10, scale=scale, basis_bytes=10 * numel * 8)
    top_eigenpair(loss, params, iters=10, scale=scale, basis_bytes=10 * numel * 8 - 1)
    monkeypatch.setattr(curvature, "LANCZOS_BASIS_BYTES", 0)
    top_eigenpair(loss, params, iters=10, scale=scale)
    assert seen == [
        (True, torch.float64),
        (False, torch.float32),
        (False, torch.float32),  # the second pass
        (False, torch.float32),
        (False, torch.float32),
    ]


def test_auto_lr_formula_and_validation():
    assert auto_lr(9.0, 1.0, safety=0.5) == pytest.approx(0.05)
    assert auto_lr(-9.0, 1.0, safety=1.0) == pytest.approx(0.1)  # largest |curvature|
    with pytest.raises(ValueError, match="safety"):
        auto_lr(1.0, 0.1, safety=0.0)
    with pytest.raises(ValueError, match="h_max"):
        auto_lr(0.0, 0.0)


# --------------------------------------------------------------------------- no double backward


class _TanhGrad(torch.autograd.Function):
    """tanh's backward as a kernel with no derivative of its own (no ``backward``)."""

    @staticmethod
    def forward(ctx, g, y):
        return g * (1 - y * y)


class _FusedTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return _TanhGrad.apply(g, y)


def _tanh_mlp(dtype, seed=0):
    """Parameters and ``loss(act)`` of a tanh MLP on random data."""
    torch.manual_seed(seed)
    x, y = torch.randn(64, 5, dtype=dtype), torch.randn(64, dtype=dtype)
    w = torch.randn(5, 16, dtype=dtype, requires_grad=True)
    u = torch.randn(16, dtype=dtype, requires_grad=True)
    return [w, u], lambda act: lambda: ((act(x @ w) @ u - y) ** 2).mean()


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-4), (torch.float32, 1e-2)])
def test_finite_difference_hvp_matches_double_backward(dtype, rtol):
    params, loss = _tanh_mlp(dtype)
    v = [torch.randn_like(p) for p in params]
    exact = hvp(loss(torch.tanh), params, v, method="autograd")
    before = [p.detach().clone() for p in params]
    fd = hvp(loss(torch.tanh), params, v, method="finite_difference")
    for a, b in zip(fd, exact, strict=True):
        assert (a - b).norm() <= rtol * b.norm()
    # the weights are put back bit for bit and nothing is written into .grad
    assert all(torch.equal(p, q) for p, q in zip(params, before, strict=True))
    assert all(p.grad is None for p in params)


def test_no_double_backward_falls_back_or_says_so():
    params, loss = _tanh_mlp(torch.float64)
    fused, ref = loss(_FusedTanh.apply), loss(torch.tanh)
    v = [torch.randn_like(p) for p in params]
    before = [p.detach().clone() for p in params]
    with pytest.raises(DoubleBackwardError, match="double backward failed.*backward or vjp"):
        hvp(fused, params, v, method="autograd")
    got = hvp(fused, params, v)  # "auto": central differences
    exact = hvp(ref, params, v, method="autograd")
    for a, b in zip(got, exact, strict=True):
        assert (a - b).norm() <= 1e-4 * b.norm()
    assert all(torch.equal(p, q) for p, q in zip(params, before, strict=True))
    top = lanczos_top_eigenvalues(fused, params, iters=12)[0]
    assert top == pytest.approx(lanczos_top_eigenvalues(ref, params, iters=12)[0], rel=1e-4)
    with pytest.raises(ValueError, match="Invalid hvp method: 'double'.*auto, autograd"):
        hvp(fused, params, v, method="double")


def test_compiled_model_curvature_by_differences():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
    x, y = torch.randn(128, 5), torch.randint(0, 3, (128,))
    compiled = torch.compile(model, backend="aot_eager")  # AOTAutograd: no double backward
    params = list(model.parameters())

    def loss(m):
        return lambda: torch.nn.functional.cross_entropy(m(x), y)

    with pytest.raises(DoubleBackwardError):
        top_eigenpair(loss(compiled), params, iters=10, hvp="autograd")
    h_fd, _, n = top_eigenpair(loss(compiled), params, iters=10)
    h_exact, _, _ = top_eigenpair(loss(model), params, iters=10, hvp="autograd")
    assert n == 10
    assert h_fd == pytest.approx(h_exact, rel=1e-3)


class _OnceTanh(_FusedTanh):
    """tanh whose backward is marked once_differentiable (its derivative dropped silently)."""

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


def test_a_once_differentiable_function_is_not_differentiated_twice_silently():
    """Double backward through it does not raise in torch but drops its terms (products off by
    more than half here); the probe sees its node and takes differences instead."""
    params, loss = _tanh_mlp(torch.float64)
    once, ref = loss(_OnceTanh.apply), loss(torch.tanh)
    v = [torch.randn_like(p) for p in params]
    exact = hvp(ref, params, v, method="autograd")
    with pytest.raises(DoubleBackwardError, match="once_differentiable"):
        hvp(once, params, v, method="autograd")
    for a, b in zip(hvp(once, params, v), exact, strict=True):
        assert (a - b).norm() <= 1e-4 * b.norm()


def test_differences_take_both_passes_with_the_same_dropout_mask():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 32), torch.nn.Tanh(), torch.nn.Dropout(0.5), torch.nn.Linear(32, 1)
    ).double()
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    params = list(model.parameters())
    loss = lambda: ((model(x) - y) ** 2).mean()  # noqa: E731
    v = [torch.randn_like(p) for p in params]
    torch.manual_seed(1)
    exact = hvp(loss, params, v, method="autograd")  # the first mask drawn after the seed
    torch.manual_seed(1)
    fd = hvp(loss, params, v, method="finite_difference")
    for a, b in zip(fd, exact, strict=True):
        assert (a - b).norm() <= 1e-4 * b.norm()
    # and a whole probe keeps that mask, as double backward's single forward does
    torch.manual_seed(1)
    top = lanczos_top_eigenvalues(loss, params, iters=10, hvp="autograd")[0]
    torch.manual_seed(1)
    assert lanczos_top_eigenvalues(loss, params, iters=10, hvp="finite_difference")[0] == (
        pytest.approx(top, rel=1e-4)
    )
