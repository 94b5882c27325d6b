"""Hessian-vector products, top-eigenvalue estimates, and the automatic phase-2 step size.

``loss_fn()`` must return the loss (a scalar with graph) on the batch whose curvature is wanted,
typically the full training set. Hessian-vector products use double backward,
``Hv = ∇(∇L · v)``, where the model has one. Where it raises instead (a ``torch.compile``-d
model: AOTAutograd has no double backward; a custom kernel whose backward has no derivative) or the
gradient's graph does not fit in memory, ``hvp="auto"`` (the default) falls back to central
differences of gradients, ``Hv ≈ (∇L(w + εv) − ∇L(w − εv)) / 2ε``: two forward + backward
passes, all of one probe with the same random numbers (dropout masks) as double backward's
one forward, the weights put back bit for bit afterwards. Nothing is written into ``.grad``.

Differences also see the curvature of ReLU kinks, which double backward (second derivative 0
almost everywhere) does not. Top eigenvalue at the switch (20 Lanczos steps), double backward →
differences: default MLP on a+b mod 97, Adam's metric 17,563 → 18,758 (+7%), raw 14.6 → 15.3;
1-layer transformer, Adam's metric 7,484 → 7,551 (+1%), raw 12.2 → 20.5; MLP of width 128 on
p = 23 (``train.py`` with and without ``trainer.compile=true``) 4,270 → 6,819 (+60%). η from it
comes out lower, never higher. Wall time: the same (20 products: MLP 5.9 s against 6.1 s,
transformer 9.3 s against 10.1 s, one thread).

A custom ``autograd.Function`` marked ``once_differentiable`` does not raise in double backward
(torch 2.13): the terms that pass through its backward are dropped silently (a tanh MLP:
products off by 63-90%). The graph of the gradient is therefore searched for the node such a
function leaves, and where it is found "auto" takes differences and "autograd" raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "hvp",
    "top_eigenvalue",
    "top_eigenpair",
    "lanczos_top_eigenvalues",
    "auto_lr",
    "HVP_METHODS",
    "DoubleBackwardError",
]

LossFn = Callable[[], Tensor]


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


HVP_METHODS = ("auto", "autograd", "finite_difference")
# ε of the central difference, relative to the weights: ε·‖v‖ = FD_STEP·(1 + ‖w‖). On the default
# MLP at its switch (float32, ‖w‖ ≈ 130) the top curvature read 17,563 by double backward and
# 29,970 / 19,203 / 18,758 / 19,083 at FD_STEP 1e-3 / 3e-4 / 1e-4 / 1e-5: larger steps cross more
# ReLU kinks, and below 1e-4 float32 rounding takes over.
FD_STEP = 1e-4
# The Lanczos probes keep every Lanczos vector (float64, full reorthogonalisation) while they fit
# in this many bytes; above, three float32 vectors (see ``top_eigenpair``). Kept whole, the 20
# vectors of the switch's probe (and the copies the reorthogonalisation stacked) held 123x the
# float32 weights: 9.8 GB for an MLP of 21M parameters.
LANCZOS_BASIS_BYTES = 2**30


class DoubleBackwardError(RuntimeError):
    """``hvp="autograd"`` and the loss has no double backward (or its graph did not fit)."""


def _check_method(method: str) -> None:
    if method not in HVP_METHODS:
        raise ValueError(f"Invalid hvp method: {method!r} (accepted: {', '.join(HVP_METHODS)})")


def _holds_error_node(tensors: Sequence[Tensor]) -> bool:
    """Does the graph behind ``tensors`` hold autograd's ``Error`` node, the one a
    ``once_differentiable`` backward leaves where its own derivative would be?"""
    seen: set[int] = set()
    stack = [t.grad_fn for t in tensors]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.name() == "torch::autograd::Error":
            return True
        stack.extend(fn for fn, _ in node.next_functions)
    return False


class _HessianOperator:
    """``H v`` of ``loss_fn()`` w.r.t. ``params``; ``method`` says how (see the module docstring).

    By double backward the gradient graph is built once and each ``__call__`` is one extra
    backward pass; by central differences each ``__call__`` is two forward + backward passes.
    ``self.method`` is the one in use ("autograd" or "finite_difference").
    """

    # What a missing double backward (or no memory for its graph) raises.
    _FAILURES = (RuntimeError, NotImplementedError)

    def __init__(
        self,
        loss_fn: LossFn,
        params: Sequence[Tensor],
        method: str = "auto",
        reduce: Callable[[list[Tensor]], list[Tensor]] | None = None,
    ) -> None:
        _check_method(method)
        self.reduce = reduce
        self.loss_fn = loss_fn
        self.params = list(params)
        self.requested = method
        self.method = "finite_difference" if method == "finite_difference" else "autograd"
        self.grads: list[Tensor] = []
        self.live: list[int] = []
        self._rng: tuple[Tensor, list[Tensor]] | None = None  # see _gradient
        self._saved: list[Tensor] | None = None  # see _finite_difference
        self._w_norm = 0.0
        if self.method == "autograd":
            try:
                self._build()
            except self._FAILURES as err:
                self._fall_back(err)

    def _build(self) -> None:
        # The math attention kernel has a double backward; the fused CPU/flash ones do not.
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
            loss = self.loss_fn()
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        # A gradient without graph (unused or linear parameter) has a zero Hessian row block.
        self.live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self.grads = [grads[i] for i in self.live]
        if _holds_error_node(self.grads):
            raise RuntimeError(
                "the gradient's graph passes through a once_differentiable backward, whose "
                "derivative autograd would drop silently"
            )

    def _fall_back(self, err: BaseException) -> None:
        self.grads, self.live = [], []  # free the graph
        if self.requested == "autograd":
            raise DoubleBackwardError(
                f"Hessian-vector product by double backward failed ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); "
                "use hvp='auto' or 'finite_difference'"
            ) from err
        self.method = "finite_difference"

    def __call__(self, v: Sequence[Tensor]) -> list[Tensor]:
        hv = None
        if self.method == "autograd":
            try:
                hv = self._autograd(v)
            except self._FAILURES as err:
                self._fall_back(err)
        if hv is None:
            hv = self._finite_difference(v)
        return hv if self.reduce is None else self.reduce(hv)

    def _autograd(self, v: Sequence[Tensor]) -> list[Tensor]:
        if not self.live:
            return [torch.zeros_like(p) for p in self.params]
        with torch.enable_grad():
            hv = torch.autograd.grad(
                self.grads,
                self.params,
                grad_outputs=[v[i] for i in self.live],
                retain_graph=True,
                allow_unused=True,
            )
        return [
            torch.zeros_like(p) if h is None else h.detach()
            for p, h in zip(self.params, hv, strict=True)
        ]

    def _gradient(self) -> list[Tensor]:
        # Every pass draws the random numbers of the first one (dropout masks), as double
        # backward differentiates one forward: a difference of two masks' gradients over 2ε
        # would swamp the curvature.
        cuda = sorted({p.device for p in self.params if p.device.type == "cuda"}, key=str)
        if self._rng is None:
            self._rng = (torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda])
        else:
            torch.set_rng_state(self._rng[0])
            for d, state in zip(cuda, self._rng[1], strict=True):
                torch.cuda.set_rng_state(state, d)
        with torch.enable_grad():
            grads = torch.autograd.grad(self.loss_fn(), self.params, allow_unused=True)
        return [
            torch.zeros_like(p) if g is None else g.detach()
            for p, g in zip(self.params, grads, strict=True)
        ]

    @torch.no_grad()
    def _finite_difference(self, v: Sequence[Tensor]) -> list[Tensor]:
        v_norm = math.sqrt(sum(float(x.double().pow(2).sum()) for x in v))
        if v_norm == 0.0 or not self.params:
            return [torch.zeros_like(p) for p in self.params]
        if self._saved is None:  # the weights every product of this operator is taken at
            self._saved = [p.detach().clone() for p in self.params]
            self._w_norm = math.sqrt(sum(float(w.double().pow(2).sum()) for w in self._saved))
        saved = self._saved
        eps = FD_STEP * (1.0 + self._w_norm) / v_norm
        try:
            for p, w, x in zip(self.params, saved, v, strict=True):
                p.copy_(w + eps * x.to(p.dtype))
            plus = self._gradient()
            for p, w, x in zip(self.params, saved, v, strict=True):
                p.copy_(w - eps * x.to(p.dtype))
            minus = self._gradient()
        finally:
            for p, w in zip(self.params, saved, strict=True):
                p.copy_(w)
        return [(a - b) / (2 * eps) for a, b in zip(plus, minus, strict=True)]


def hvp(
    loss_fn: LossFn, params: Sequence[Tensor], v: Sequence[Tensor], method: str = "auto"
) -> list[Tensor]:
    """Hessian-vector product ``H v`` of ``loss_fn()`` w.r.t. ``params``; ``method`` is one of
    ``HVP_METHODS`` (double backward, falling back to central differences under "auto")."""
    return _HessianOperator(loss_fn, params, method)(v)


def _random_unit(params: Sequence[Tensor], seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
    norm = torch.sqrt(_dot(v, v))
    return [x / norm for x in v]


def top_eigenvalue(
    loss_fn: LossFn,
    params: Sequence[Tensor],
    iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    hvp: str = "auto",
) -> tuple[float, int]:
    """Power iteration on the Hessian: returns (Rayleigh quotient ``vᵀHv``, iterations used).

    Stops when the relative change of the Rayleigh quotient drops below ``tol`` or after
    ``iters`` iterations. The estimate is the eigenvalue of largest magnitude (signed).
    ``hvp``: how Hessian-vector products are taken (``HVP_METHODS``, module docstring).
    """
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"top_eigenvalue: iters must be an int >= 1, got {iters!r}")
    if not tol > 0:
        raise ValueError(f"top_eigenvalue: tol must be a float > 0, got {tol!r}")
    params = [p for p in params if p.requires_grad]
    op = _HessianOperator(loss_fn, params, hvp)
    v = _random_unit(params, seed)
    eig = math.nan
    for it in range(1, iters + 1):
        hv = op(v)
        new = float(_dot(v, hv))
        norm = float(torch.sqrt(_dot(hv, hv)))
        if norm == 0.0:
            return 0.0, it
        v = [h / norm for h in hv]
        if it > 1 and abs(new - eig) < tol * abs(new):
            return new, it
        eig = new
    return eig, iters


def _lanczos(
    apply: Callable[[Tensor], Tensor],
    q: Tensor,
    iters: int,
    full: bool = True,
    visit: Callable[[int, Tensor], None] | None = None,
) -> tuple[list[Tensor], Tensor]:
    """Lanczos from the unit vector ``q``: the Lanczos vectors kept and the m x m tridiagonal
    matrix T (float64, ``m <= iters``) whose eigenvalues are the Ritz values. Stops early when
    the Krylov space is exhausted. ``full``: every Lanczos vector is kept and each new one is
    orthogonalised (twice) against all of them; otherwise only the last two are kept, the
    three-term recurrence orthogonalised against those (the top Ritz value converges the same
    way; lower ones may repeat), and the list returned is empty. ``visit(j, q_j)`` sees each
    Lanczos vector (``_ritz_vector`` uses it)."""
    kept, alphas, betas = [q], [], []
    for j in range(iters):
        cur = kept[-1]
        if visit is not None:
            visit(j, cur)
        w = apply(cur)
        alpha = float(w @ cur)
        alphas.append(alpha)
        against = kept if full else kept[-2:]
        for _ in range(2):  # twice: one pass leaves rounding of the size it removes
            for v in against:
                w.sub_(v, alpha=float(w @ v))
        beta = float(w.norm())
        if j == iters - 1 or beta < 1e-10 * max(1.0, abs(alpha)):
            break
        betas.append(beta)
        kept.append(w.div_(beta))
        if not full:
            kept = kept[-2:]
    m = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    return (kept[:m] if full else []), T


def _ritz_vector(
    apply: Callable[[Tensor], Tensor], q: Tensor, basis: list[Tensor], y: Tensor
) -> tuple[Tensor, int]:
    """``Σ y_j q_j`` over the Lanczos vectors from ``q`` and the products it took: from the kept
    ``basis``, or (an empty one) by running the three-term recurrence again, ``len(y)`` more
    products."""
    ritz = torch.zeros_like(q)

    def add(j: int, v: Tensor) -> None:
        ritz.add_(v, alpha=float(y[j]))

    if basis:
        for j, v in enumerate(basis):
            add(j, v)
        return ritz, 0
    _lanczos(apply, q, len(y), full=False, visit=add)
    return ritz, len(y)


def _keeps_basis(iters: int, numel: int, basis_bytes: int | None) -> bool:
    """Whether ``iters`` float64 Lanczos vectors of ``numel`` entries fit in ``basis_bytes``
    (None: ``LANCZOS_BASIS_BYTES``)."""
    budget = LANCZOS_BASIS_BYTES if basis_bytes is None else basis_bytes
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
        raise ValueError(f"basis_bytes must be None or an int >= 0, got {basis_bytes!r}")
    return iters * numel * 8 <= budget


def _flat_space(
    params: Sequence[Tensor], dtype: torch.dtype
) -> tuple[Callable[[Sequence[Tensor]], Tensor], Callable[[Tensor], list[Tensor]]]:
    """``flat`` (tensors shaped as ``params`` -> one ``dtype`` vector) and its inverse ``unflat``
    (back to each parameter's shape, dtype and device)."""
    sizes = [p.numel() for p in params]

    def flat(xs: Sequence[Tensor]) -> Tensor:
        return torch.cat([x.reshape(-1).to(dtype) for x in xs])

    def unflat(x: Tensor) -> list[Tensor]:
        return [
            part.reshape(p.shape).to(dtype=p.dtype, device=p.device)
            for part, p in zip(torch.split(x, sizes), params, strict=True)
        ]

    return flat, unflat


def _work_dtype(params: Sequence[Tensor], full: bool) -> torch.dtype:
    """float64 where the Lanczos basis is kept (it fits) or the model is float64, else float32."""
    wide = full or any(p.dtype == torch.float64 for p in params)
    return torch.float64 if wide else torch.float32


def lanczos_top_eigenvalues(
    loss_fn: LossFn,
    params: Sequence[Tensor],
    k: int = 1,
    iters: int = 30,
    seed: int = 0,
    hvp: str = "auto",
    basis_bytes: int | None = None,
) -> list[float]:
    """Top-``k`` Ritz values of the Hessian by Lanczos.

    Converges much faster than power iteration when the top eigenvalues are close. Costs
    ``iters`` Hessian-vector products; ``hvp`` as for ``top_eigenvalue``. With full
    reorthogonalisation where the ``iters`` float64 Lanczos vectors fit in ``basis_bytes``
    (None: ``LANCZOS_BASIS_BYTES``), else by the three-term recurrence in float32 (three vectors
    kept; a converged value may then also appear among the lower ones).
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"lanczos_top_eigenvalues: k must be an int >= 1, got {k!r}")
    if not isinstance(iters, int) or iters < k:
        raise ValueError(f"lanczos_top_eigenvalues: iters must be an int >= k, got {iters!r}")
    params = [p for p in params if p.requires_grad]
    full = _keeps_basis(iters, sum(p.numel() for p in params), basis_bytes)
    op = _HessianOperator(loss_fn, params, hvp)
    flat, unflat = _flat_space(params, _work_dtype(params, full))
    q = flat(_random_unit(params, seed))
    _, T = _lanczos(lambda x: flat(op(unflat(x))).to(q.device), q, iters, full)
    eigs = torch.linalg.eigvalsh(T).flip(0)
    return [float(e) for e in eigs[:k]]


def top_eigenpair(
    loss_fn: LossFn,
    params: Sequence[Tensor],
    iters: int = 20,
    scale: Sequence[Tensor | None] | None = None,
    v0: Sequence[Tensor] | None = None,
    seed: int = 0,
    hvp: str = "auto",
    reduce: Callable[[list[Tensor]], list[Tensor]] | None = None,
    basis_bytes: int | None = None,
    vector: bool = True,
) -> tuple[float, list[Tensor] | None, int]:
    """Top eigenvalue and eigenvector of ``S H S`` by Lanczos.

    ``S`` is diagonal, given per parameter by ``scale`` (None: identity; a None entry drops that
    parameter from the probe). For AdamCDM, ``S = 1/√D`` and ``S H S`` has the spectrum of the
    preconditioned Hessian ``D⁻¹H`` that its steep modes see. ``v0`` warm-starts the iteration
    (e.g. the previous eigenvector); a little noise is mixed in so a new top mode can still be
    found. Returns ``(θ, v, hvps)``: the top Ritz value (a lower bound of the top eigenvalue that
    is tight after a few iterations), its unit Ritz vector and the number of Hessian-vector
    products spent (each one extra backward pass, or two forward + backward passes by
    central differences: ``hvp`` as for ``top_eigenvalue``). ``reduce`` maps each product to
    the one used (GROKtimizer: the mean over data-parallel ranks, ``groktimizer.distributed``).
    ``vector=False``: v is None (and no second pass is run, below).

    Memory: where the ``iters`` Lanczos vectors fit in ``basis_bytes`` as float64 (None:
    ``LANCZOS_BASIS_BYTES``, 1 GiB: 6.7M parameters at 20 iterations) they are all kept, with
    full reorthogonalisation; above, the probe keeps three float32 vectors (the three-term
    recurrence) and runs it a second time to build the Ritz vector, so it takes about twice the
    products and about 10x the float32 weights' memory whatever ``iters`` is.
    """
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"top_eigenpair: iters must be an int >= 1, got {iters!r}")
    params = list(params)
    if scale is None:
        scale = [None if not p.requires_grad else torch.ones_like(p) for p in params]
    keep = [
        i
        for i, (p, s) in enumerate(zip(params, scale, strict=True))
        if p.requires_grad and s is not None
    ]
    ps = [params[i] for i in keep]
    full = _keeps_basis(iters, sum(p.numel() for p in ps), basis_bytes)
    op = _HessianOperator(loss_fn, ps, hvp, reduce)
    flat, unflat = _flat_space(ps, _work_dtype(ps, full))
    s_flat = flat([scale[i].detach() for i in keep])  # type: ignore[union-attr]

    def apply(x: Tensor) -> Tensor:
        return s_flat * flat(op(unflat(s_flat * x)))

    q = flat(_random_unit(ps, seed)).to(s_flat.device)
    if v0 is not None:
        w0 = flat([v0[i] for i in keep]).to(s_flat.device)
        if float(w0.norm()) > 0:
            q = w0 / w0.norm() + 0.1 * q  # warm start, with noise to escape a stale mode
    q = q / q.norm()
    basis, T = _lanczos(apply, q, iters, full)
    m = T.shape[0]
    evals, evecs = torch.linalg.eigh(T)
    theta = float(evals[-1])
    if not vector:
        return theta, None, m
    ritz, extra = _ritz_vector(apply, q, basis, evecs[:, -1])
    del basis
    vec_kept = unflat(ritz / ritz.norm())
    vec = [torch.zeros_like(p) for p in params]
    for i, v in zip(keep, vec_kept, strict=True):
        vec[i] = v
    return theta, vec, m + extra


def auto_lr(h_max: float, weight_decay: float, safety: float = 0.5) -> float:
    """Phase-2 step size ``η = c / (|h_max| + λ)`` with c = ``safety``.

    Heavy ball is stable on a mode of curvature h + λ while ``η(h + λ) < 2(1 + β)``; c ≤ 1 keeps
    the steepest mode well inside that bound.
    """
    if not safety > 0:
        raise ValueError(f"auto_lr: safety must be a float > 0, got {safety!r}")
    if not weight_decay >= 0:
        raise ValueError(f"auto_lr: weight_decay must be a float >= 0, got {weight_decay!r}")
    curvature = abs(h_max) + weight_decay
    if not math.isfinite(curvature) or curvature <= 0:
        raise ValueError(
            f"auto_lr: |h_max| + weight_decay must be finite and > 0, got {curvature!r}"
        )
    return safety / curvature
