"""Theory of the phase-2 optimizer: momentum formulas, rates, stability, and a quadratic simulator.

Local quadratic model (DESIGN.md §1). Near the interpolating manifold the regularized objective
``L(w) + (λ/2)‖w‖²`` is a quadratic whose Hessian ``H + λI`` has steep eigenvalues ``h_i + λ`` and
flat ones equal to ``λ`` exactly. Every method studied here is linear in the error, so each
eigen-direction of curvature ``c`` evolves by its own scalar recurrence:

* gradient descent: ``x_{k+1} = (1 − ηc) x_k``;
* heavy ball (PyTorch ``SGD(momentum=β, dampening=0)``; the buffer starts at the first gradient,
  i.e. the iterate starts at rest, ``x_{-1} = x_0``): ``x_{k+1} = (1 + β − ηc) x_k − β x_{k−1}``,
  characteristic polynomial ``z² − (1 + β − ηc) z + β``;
* Nesterov (PyTorch ``nesterov=True``): ``b_{k} = β b_{k−1} + c x_k``,
  ``x_{k+1} = x_k − η (c x_k + β b_k)``, characteristic polynomial
  ``z² − (1 + β)(1 − ηc) z + β (1 − ηc)``.

CDM picks ``β = (1 − ζ√(ηλ))²``: at ``ζ = 1`` the flat mode has the double root ``1 − √(ηλ)`` and
needs ``≈ ln(1/ε)/√(ηλ)`` steps instead of gradient descent's ``ln(1/ε)/(ηλ)``.

:class:`LinearRegressionProblem` checks this on overparameterized linear regression. It counts the
steps each method needs to reach a relative error ε from the exact per-mode closed form (2×2 matrix
powers), so ten million gradient-descent steps cost milliseconds, and it can iterate the same
methods explicitly in torch (hand-written loops or ``torch.optim.SGD`` / ``AdamW``) to cross-check.

This module imports only torch, numpy and the standard library (no Hydra, W&B or datasets).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .cdm import critical_momentum as _cdm_momentum

__all__ = [
    "METHODS",
    "LINEAR_METHODS",
    "critical_momentum",
    "heavy_ball_rate",
    "nesterov_rate",
    "gd_rate",
    "flat_mode_rate",
    "steps_to_tolerance",
    "heavy_ball_stable",
    "nesterov_stable",
    "safe_lr",
    "LinearRegressionProblem",
    "StepsResult",
    "SpeedupTable",
    "fit_loglog_slope",
    "speedup_table",
]

#: Methods the simulator knows. ``heavy_ball`` uses the fixed momentum β = 0.9.
METHODS: tuple[str, ...] = ("gd", "heavy_ball", "cdm", "nesterov", "adamw")
#: Methods that are linear in the error, hence solvable in closed form.
LINEAR_METHODS: tuple[str, ...] = ("gd", "heavy_ball", "cdm", "nesterov")
HEAVY_BALL_MOMENTUM = 0.9


# ----------------------------------------------------------------------------------------------
# argument checks: one line naming the argument and the accepted range
# ----------------------------------------------------------------------------------------------
def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"Invalid {name}: {value} (must be a finite number > 0)")
    return value


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value} (must be finite)")
    return value


def _momentum(value: float) -> float:
    value = float(value)
    if not (0.0 <= value < 1.0):
        raise ValueError(f"Invalid momentum: {value} (must be in [0, 1))")
    return value


def _unit_interval(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 < value < 1.0):
        raise ValueError(f"Invalid {name}: {value} (must be in (0, 1))")
    return value


# ----------------------------------------------------------------------------------------------
# closed-form formulas
# ----------------------------------------------------------------------------------------------
def critical_momentum(
    lr: float, weight_decay: float, damping: float = 1.0, nesterov: bool = False
) -> float:
    """Momentum that damps the flat weight-decay mode (curvature λ) with damping ratio ζ.

    Heavy ball: ``β = max(0, 1 − ζ√(ηλ))²``;
    Nesterov: ``β_N = max(0, (1 − ζ√(ηλ)) / (1 + ζ√(ηλ)))``.
    ``ζ = 1`` is critical damping (double root ``1 − √(ηλ)``), ``ζ < 1`` under-damped, ``ζ > 1``
    over-damped. The clip at 0 applies when ``ζ√(ηλ) ≥ 1`` (plain gradient descent is then already
    at least as fast).
    """
    lr = _positive("lr", lr)
    weight_decay = _positive("weight_decay", weight_decay)
    damping = _positive("damping", damping)
    return _cdm_momentum(lr, weight_decay, damping, nesterov)


def _max_root_modulus(trace: float, det: float, disc: float) -> float:
    """Spectral radius of ``z² − trace·z + det`` given its discriminant ``trace² − 4·det``."""
    if disc >= 0.0:
        r = math.sqrt(disc)
        return max(abs(trace + r), abs(trace - r)) / 2.0
    return math.sqrt(det)  # complex pair: |z|² = z·z̄ = det


def heavy_ball_rate(lr: float, curvature: float, momentum: float) -> float:
    """Per-step contraction of heavy ball on a mode of curvature ``c``.

    The exact spectral radius ``max |z|`` over the roots of ``z² − (1 + β − ηc) z + β``: ``√β``
    when under-damped (complex roots), the larger real root's modulus otherwise, ``1 − ηc`` at
    ``β = 0``. The discriminant is evaluated in the factored form
    ``((1 − √β)² − ηc)((1 + √β)² − ηc)``. A double root is ill-conditioned: a rounding error u in
    β moves it by about ``√u·√(ηc)`` (≈ 1e-10 at ηc = 1e-6); :func:`flat_mode_rate` returns the
    exact ``1 − ζ√(ηλ)`` for ζ ≤ 1 instead.
    """
    lr = _positive("lr", lr)
    c = _finite("curvature", curvature)
    beta = _momentum(momentum)
    a = lr * c
    sb = math.sqrt(beta)
    disc = ((1.0 - sb) ** 2 - a) * ((1.0 + sb) ** 2 - a)
    return _max_root_modulus(1.0 + beta - a, beta, disc)


def nesterov_rate(lr: float, curvature: float, momentum: float) -> float:
    """Per-step contraction of Nesterov momentum (PyTorch form) on a mode of curvature ``c``.

    Spectral radius of ``z² − (1 + β)(1 − ηc) z + β(1 − ηc)``.
    """
    lr = _positive("lr", lr)
    c = _finite("curvature", curvature)
    beta = _momentum(momentum)
    q = 1.0 - lr * c
    trace, det = (1.0 + beta) * q, beta * q
    disc = trace * trace - 4.0 * det
    if disc < 0.0:
        return math.sqrt(det)
    return _max_root_modulus(trace, det, disc)


def gd_rate(lr: float, curvature: float) -> float:
    """Per-step contraction of gradient descent on a mode of curvature ``c``: ``|1 − ηc|``."""
    return abs(1.0 - _positive("lr", lr) * _finite("curvature", curvature))


def flat_mode_rate(
    lr: float, weight_decay: float, damping: float = 1.0, nesterov: bool = False
) -> float:
    """Contraction of the flat mode (curvature λ) under CDM with damping ratio ζ.

    Equals ``1 − ζ√(ηλ)`` for ``ζ ≤ 1`` (critical: double root; under-damped: ``|z| = √β``); for
    ``ζ > 1`` it is the exact larger root of the over-damped recurrence. With ``nesterov=True`` the
    momentum is ``β_N`` and the rate is the Nesterov recurrence's spectral radius (``1 − √(ηλ)``
    at ``ζ = 1``).
    """
    beta = critical_momentum(lr, weight_decay, damping, nesterov)
    if nesterov:
        return nesterov_rate(lr, weight_decay, beta)
    s = damping * math.sqrt(lr * weight_decay)
    if s <= 1.0 and damping <= 1.0:
        # |z| = √β = 1 − ζ√(ηλ) exactly; the root solver would lose ~√(machine ε)·√(ηλ) at the
        # critical double root, which rounding of β perturbs into a close pair.
        return 1.0 - s
    return heavy_ball_rate(lr, weight_decay, beta)


def steps_to_tolerance(rate: float, eps: float) -> int:
    """Steps for a geometric factor ``rate`` to shrink an error by ``ε``: ``⌈ln(1/ε) / −ln(rate)⌉``.

    This is the asymptotic count; a double root adds a polynomial factor ``(1 + k√(ηλ))`` that the
    simulator includes and this formula does not.
    """
    rate = _unit_interval("rate", rate)
    eps = _unit_interval("eps", eps)
    return math.ceil(math.log(eps) / math.log(rate))


def heavy_ball_stable(lr: float, curvature: float, momentum: float) -> bool:
    """Heavy ball is stable on curvature ``c`` iff ``0 < ηc < 2(1 + β)`` (strict)."""
    a = _positive("lr", lr) * _finite("curvature", curvature)
    beta = _momentum(momentum)
    return 0.0 < a < 2.0 * (1.0 + beta)


def nesterov_stable(lr: float, curvature: float, momentum: float) -> bool:
    """Nesterov momentum is stable on curvature ``c`` iff ``0 < ηc < (2 + 2β)/(1 + 2β)``."""
    a = _positive("lr", lr) * _finite("curvature", curvature)
    beta = _momentum(momentum)
    return 0.0 < a < (2.0 + 2.0 * beta) / (1.0 + 2.0 * beta)


def safe_lr(h_max: float, weight_decay: float = 0.0, safety: float = 1.0) -> float:
    """Phase-2 step size ``η = safety / (h_max + λ)``: the steepest mode then has ``ηc = safety``.

    ``safety ≤ 1`` keeps every mode inside both stability regions for any ``β ∈ [0, 1)``.
    """
    h_max = _positive("h_max", h_max)
    weight_decay = float(weight_decay)
    if not (math.isfinite(weight_decay) and weight_decay >= 0.0):
        raise ValueError(f"Invalid weight_decay: {weight_decay} (must be a finite number >= 0)")
    safety = _positive("safety", safety)
    return safety / (h_max + weight_decay)


# ----------------------------------------------------------------------------------------------
# the quadratic-model simulator
# ----------------------------------------------------------------------------------------------
@dataclass
class StepsResult:
    """Steps one method needs to reach relative error ``eps`` at weight decay ``lam``.

    ``steps`` is the first ``k`` with ``‖w_k − w_λ‖ / ‖w_0 − w_λ‖ ≤ ε`` or ``None`` when not reached
    within ``max_steps`` (``reached`` is then False and ``rel_error`` is the error at the cap).
    ``dist_min_norm`` is ``‖w_k − pinv(X) y‖ / ‖pinv(X) y‖`` at that step (or at the cap).
    """

    method: str
    lam: float
    lr: float
    momentum: float
    eps: float
    steps: int | None
    reached: bool
    max_steps: int
    rel_error: float
    dist_min_norm: float
    min_rel_error: float | None = None  # AdamW: smallest error seen along the run
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain dict (for CSV / JSON)."""
        return asdict(self)


class LinearRegressionProblem:
    """Overparameterized noise-free linear regression, the quadratic model of DESIGN.md §1.

    Data: ``X ∈ R^{n×d}`` with i.i.d. ``N(0, feature_scale²)`` entries, teacher
    ``w_teacher ~ N(0, I/d)``, targets ``y = X w_teacher``, initialisation
    ``w_0 = init_scale · N(0, I/d)`` (large init: ``‖w_0‖ ≈ init_scale · ‖w_teacher‖``).

    Loss ``L(w) = ‖Xw − y‖² / (2n)``, Hessian ``H = XᵀX/n`` (rank n; eigenvalues ``h_i = s_i²/n``
    from the SVD ``X = U S Vᵀ``; ``h_max = s_1²/n``, about ``feature_scale² (√(d/n) + 1)²`` = 17 at
    the defaults). With weight decay the objective is ``L(w) + (λ/2)‖w‖²``, its gradient
    ``(H + λI)(w − w_λ)`` and its unique minimiser the ridge solution
    ``w_λ = (H + λI)^{-1} Xᵀy/n = Xᵀ(XXᵀ + nλI)^{-1} y = V diag(s/(s² + nλ)) Uᵀ y``,
    which tends to the min-norm interpolant ``w* = pinv(X) y = V diag(1/s) Uᵀ y`` as λ → 0
    (``‖w_λ − w*‖ = O(λ)``).

    The error ``e = w − w_λ`` splits into the n row-space eigen-directions (curvature ``h_i + λ``)
    and the (d − n)-dimensional null space of X, where every direction has curvature ``λ``: the
    null-space part keeps its direction and only its length evolves, by the flat-mode recurrence.
    So ``‖e_k‖² = Σ_i r_k(h_i + λ)² a_i² + r_k(λ)² ‖P_null e_0‖²`` with ``a = Vᵀ e_0`` and
    ``r_k(c)`` the scalar response of the method (see the module docstring).

    Step size for every method: ``η = 1/(h_max + λ)`` (:func:`safe_lr`, safety 1). Methods:
    ``gd``; ``heavy_ball`` (β = 0.9); ``cdm`` (β = (1 − √(ηλ))²); ``nesterov`` (β_N); ``adamw``
    (``torch.optim.AdamW`` with decoupled ``weight_decay=λ`` and lr ``adamw_lr``, default η,
    iterated explicitly up to a cap).
    """

    def __init__(
        self,
        n: int = 50,
        d: int = 500,
        seed: int = 0,
        init_scale: float = 10.0,
        feature_scale: float = 1.0,
    ) -> None:
        if int(n) < 1:
            raise ValueError(f"Invalid n: {n} (must be >= 1)")
        if int(d) <= int(n):
            raise ValueError(f"Invalid d: {d} (must be > n = {n}: overparameterized)")
        self.n, self.d, self.seed = int(n), int(d), int(seed)
        self.init_scale = _positive("init_scale", init_scale)
        self.feature_scale = _positive("feature_scale", feature_scale)

        rng = np.random.default_rng(self.seed)
        self.X = rng.standard_normal((self.n, self.d)) * self.feature_scale
        self.w_teacher = rng.standard_normal(self.d) / math.sqrt(self.d)
        self.y = self.X @ self.w_teacher
        self.w0 = self.init_scale * rng.standard_normal(self.d) / math.sqrt(self.d)

        u, s, vt = np.linalg.svd(self.X, full_matrices=False)
        self._u, self._s, self._v = u, s, vt.T  # V: d × n, orthonormal columns
        self.h = s**2 / self.n  # nonzero Hessian eigenvalues, descending
        self.h_max = float(self.h[0])
        self._uty = u.T @ self.y
        self.w_min_norm = self._v @ (self._uty / s)

    # -- targets, step sizes, momenta ---------------------------------------------------------
    def ridge_solution(self, lam: float) -> np.ndarray:
        """``w_λ = Xᵀ(XXᵀ + nλI)^{-1} y``, the minimiser of ``‖Xw − y‖²/(2n) + (λ/2)‖w‖²``."""
        lam = _positive("lam", lam)
        s = self._s
        return self._v @ (s / (s**2 + self.n * lam) * self._uty)

    def lr(self, lam: float) -> float:
        """Shared step size ``η = 1/(h_max + λ)``."""
        return safe_lr(self.h_max, lam)

    def momentum(self, method: str, lam: float) -> float:
        """Heavy-ball momentum the method uses at weight decay ``λ`` (0 for gd and adamw)."""
        _check_method(method)
        if method in ("gd", "adamw"):
            return 0.0
        if method == "heavy_ball":
            return HEAVY_BALL_MOMENTUM
        return critical_momentum(self.lr(lam), lam, 1.0, nesterov=(method == "nesterov"))

    # -- closed form -------------------------------------------------------------------------
    def _modes(self, lam: float, w_start: np.ndarray | None = None):
        """Curvatures (n steep + 1 flat), squared error weights and the null-space error vector."""
        e0 = (self.w0 if w_start is None else w_start) - self.ridge_solution(lam)
        a = self._v.T @ e0
        e_null = e0 - self._v @ a
        curv = np.append(self.h + lam, lam)
        weights = np.append(a**2, float(e_null @ e_null))
        return curv, weights, a, e_null

    def _transfer(self, method: str, lam: float, curv: np.ndarray):
        """Per-mode 2×2 transfer matrices and initial states (state[0] is the mode's error)."""
        lr, beta = self.lr(lam), self.momentum(method, lam)
        m = np.zeros((curv.size, 2, 2))
        if method == "nesterov":
            # state (x_k, b_{k-1}), b in gradient units; the buffer starts at zero.
            m[:, 0, 0] = 1.0 - lr * curv * (1.0 + beta)
            m[:, 0, 1] = -lr * beta * beta
            m[:, 1, 0] = curv
            m[:, 1, 1] = beta
            init = np.array([1.0, 0.0])
        else:
            # state (x_k, x_{k-1}), starting at rest (x_{-1} = x_0).
            m[:, 0, 0] = 1.0 + beta - lr * curv
            m[:, 0, 1] = -beta
            m[:, 1, 0] = 1.0
            init = np.array([1.0, 1.0])
        return m, init

    def _response(self, m: np.ndarray, init: np.ndarray, k: int) -> np.ndarray:
        """``r_k(c)`` for every mode: first component of ``M^k · init`` (repeated squaring)."""
        return np.linalg.matrix_power(m, int(k))[:, 0, :] @ init

    def relative_error_at(self, method: str, lam: float, ks: Iterable[int]) -> np.ndarray:
        """Closed-form ``‖w_k − w_λ‖ / ‖w_0 − w_λ‖`` at each step in ``ks`` (linear methods)."""
        _check_linear(method)
        curv, weights, _, _ = self._modes(lam)
        m, init = self._transfer(method, lam, curv)
        total = weights.sum()
        return np.array(
            [math.sqrt(float(weights @ self._response(m, init, k) ** 2) / total) for k in ks]
        )

    def _flat_monotone(self, method: str, lam: float) -> bool:
        """Whether the flat mode's response is provably positive and non-increasing.

        For heavy ball started at rest with real roots ``0 < z₂ ≤ z₁ < 1``,
        ``x_k = (z₁^{k+1}(1 − z₂) − z₂^{k+1}(1 − z₁))/(z₁ − z₂)`` and
        ``x_k − x_{k+1} = (1 − z₁)(1 − z₂)(z₁^{k+1} − z₂^{k+1})/(z₁ − z₂) ≥ 0``.
        """
        if method == "nesterov":
            return False
        lr, beta = self.lr(lam), self.momentum(method, lam)
        a, sb = lr * lam, math.sqrt(beta)
        # Real positive roots iff ηλ ≤ (1 − √β)²; the relative slack admits the critical double
        # root through rounding (a residual imaginary part that small has a period far beyond
        # the hitting time; the tests check the counts against explicit runs).
        return a <= (1.0 - sb) ** 2 * (1.0 + 1e-9)

    def steps_to_relative_error(
        self,
        method: str,
        lam: float,
        eps: float = 1e-3,
        max_steps: int = 10**8,
        adamw_lr: float | None = None,
        adamw_steps: int = 100_000,
    ) -> StepsResult:
        """First step ``k`` with ``‖w_k − w_λ‖ ≤ ε ‖w_0 − w_λ‖``; exact for the linear methods.

        Linear methods: the error is not monotone in ``k`` (momentum oscillates), so a bisection on
        it alone could miss the first crossing. Instead: (1) the flat-mode term alone is a lower
        bound on the error and, when provably non-increasing (:meth:`_flat_monotone`), its first
        crossing ``k_lo`` (exponential search + bisection on 2×2 matrix powers) is a lower bound on
        the answer; (2) from ``k_lo`` (or 0 otherwise) the per-mode recurrences are marched step
        by step, vectorised over the n + 1 modes, until the full error is ≤ ε. Cost: O(n log k)
        for the search plus O(n) per marched step, independent of d.

        ``adamw`` is iterated explicitly with ``torch.optim.AdamW`` (lr ``adamw_lr``, default η)
        for ``min(adamw_steps, max_steps)`` steps; not reaching ε is reported (``reached=False``),
        with the smallest error seen in ``min_rel_error``. Its decoupled decay alone would need
        ``ln(1/ε)/(lr·λ)`` steps (``extra["decoupled_decay_steps"]``): a cap below that is a cap,
        not evidence; a plateau well past it is.
        """
        _check_method(method)
        lam = _positive("lam", lam)
        eps = _unit_interval("eps", eps)
        if int(max_steps) < 1:
            raise ValueError(f"Invalid max_steps: {max_steps} (must be >= 1)")
        max_steps = int(max_steps)
        if method == "adamw":
            return self._adamw_steps(lam, eps, min(int(adamw_steps), max_steps), adamw_lr)

        lr, beta = self.lr(lam), self.momentum(method, lam)
        curv, weights, a, e_null = self._modes(lam)
        m, init = self._transfer(method, lam, curv)
        tol2 = eps * eps * weights.sum()

        k_lo = 0
        if self._flat_monotone(method, lam):
            flat_m, flat_w = m[-1:], weights[-1]

            def flat_ok(k: int) -> bool:
                return flat_w * float(self._response(flat_m, init, k)[0]) ** 2 <= tol2

            hi = 1
            while hi < max_steps and not flat_ok(hi):
                hi = min(2 * hi, max_steps)
            if not flat_ok(hi):
                k_lo = max_steps  # even the lower bound never crosses: not reached
            else:
                lo = hi // 2  # flat_ok(lo) is False unless lo == 0
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if flat_ok(mid) else (mid, hi)
                k_lo = 0 if flat_ok(0) else hi

        state = np.linalg.matrix_power(m, k_lo) @ init  # (modes, 2)
        x, y = state[:, 0].copy(), state[:, 1].copy()
        m00, m01, m10, m11 = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
        k = k_lo
        err2 = float(weights @ (x * x))
        while err2 > tol2 and k < max_steps:
            x, y = m00 * x + m01 * y, m10 * x + m11 * y
            k += 1
            err2 = float(weights @ (x * x))
        reached = err2 <= tol2
        w_k = self.ridge_solution(lam) + self._v @ (a * x[:-1]) + x[-1] * e_null
        return StepsResult(
            method=method,
            lam=lam,
            lr=lr,
            momentum=beta,
            eps=eps,
            steps=k if reached else None,
            reached=reached,
            max_steps=max_steps,
            rel_error=math.sqrt(err2 / weights.sum()),
            dist_min_norm=self._dist_min_norm(w_k),
        )

    def _dist_min_norm(self, w: np.ndarray) -> float:
        return float(np.linalg.norm(w - self.w_min_norm) / np.linalg.norm(self.w_min_norm))

    # -- explicit iteration (cross-checks, AdamW) --------------------------------------------
    def explicit_run(
        self,
        method: str,
        lam: float,
        steps: int,
        backend: str = "manual",
        adamw_lr: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Iterate ``method`` step by step in torch (float64); return (relative errors, final w).

        The relative-error array has ``steps + 1`` entries (k = 0 … steps). ``backend="manual"``
        writes the recurrences out by hand (``buf ← β·buf + g``, ``w ← w − η·buf``; Nesterov
        ``w ← w − η(g + β·buf)``; ``g = ∇L(w) + λw``); ``backend="torch"`` uses
        ``torch.optim.SGD(lr=η, momentum=β, dampening=0, weight_decay=λ, nesterov=…)`` with the
        gradient of L alone (SGD couples the decay). ``adamw`` always uses ``torch.optim.AdamW``
        (default betas and eps) with ``lr=adamw_lr`` (default η, so its decoupled decay factor
        ``1 − ηλ`` per step equals gradient descent's flat-mode factor) and ``weight_decay=λ``.
        """
        _check_method(method)
        lam = _positive("lam", lam)
        if backend not in ("manual", "torch"):
            raise ValueError(f"Invalid backend: {backend!r} (must be 'manual' or 'torch')")
        steps = int(steps)
        if steps < 0:
            raise ValueError(f"Invalid steps: {steps} (must be >= 0)")
        X = torch.from_numpy(self.X)
        y = torch.from_numpy(self.y)
        target = torch.from_numpy(self.ridge_solution(lam))
        w = torch.from_numpy(self.w0.copy())
        n, lr, beta = self.n, self.lr(lam), self.momentum(method, lam)
        errs = torch.empty(steps + 1, dtype=torch.float64)
        e0 = torch.linalg.vector_norm(w - target)
        errs[0] = 1.0

        def loss_grad(w: torch.Tensor) -> torch.Tensor:
            return X.T @ (X @ w - y) / n

        with torch.no_grad():
            if method == "adamw" or backend == "torch":
                p = torch.nn.Parameter(w)
                if method == "adamw":
                    alr = lr if adamw_lr is None else _positive("adamw_lr", adamw_lr)
                    opt = torch.optim.AdamW([p], lr=alr, weight_decay=lam)
                else:
                    opt = torch.optim.SGD(
                        [p],
                        lr=lr,
                        momentum=beta,
                        dampening=0.0,
                        weight_decay=lam,
                        nesterov=(method == "nesterov"),
                    )
                for k in range(1, steps + 1):
                    p.grad = loss_grad(p.detach())
                    opt.step()
                    errs[k] = torch.linalg.vector_norm(p.detach() - target) / e0
                w = p.detach()
            else:
                buf = torch.zeros_like(w)
                for k in range(1, steps + 1):
                    g = loss_grad(w) + lam * w
                    if method == "gd":
                        w = w - lr * g
                    else:
                        buf = beta * buf + g
                        w = w - lr * (g + beta * buf if method == "nesterov" else buf)
                    errs[k] = torch.linalg.vector_norm(w - target) / e0
        return errs.numpy(), w.numpy().copy()

    def _adamw_steps(
        self, lam: float, eps: float, steps: int, adamw_lr: float | None
    ) -> StepsResult:
        adamw_lr = self.lr(lam) if adamw_lr is None else _positive("adamw_lr", adamw_lr)
        errs, w = self.explicit_run("adamw", lam, steps, adamw_lr=adamw_lr)
        hit = np.flatnonzero(errs <= eps)
        reached = hit.size > 0
        k = int(hit[0]) if reached else steps
        if reached:  # rerun to the hit so dist_min_norm refers to that step
            _, w = self.explicit_run("adamw", lam, k, adamw_lr=adamw_lr)
        # Where AdamW settles: the gradient of the *regularised* objective at its last iterate,
        # relative to that at w_0 (0 only at w_λ).
        g = lambda v: self.X.T @ (self.X @ v - self.y) / self.n + lam * v  # noqa: E731
        return StepsResult(
            method="adamw",
            lam=lam,
            lr=float(adamw_lr),
            momentum=0.0,
            eps=eps,
            steps=k if reached else None,
            reached=reached,
            max_steps=steps,
            rel_error=float(errs[k]),
            dist_min_norm=self._dist_min_norm(w),
            min_rel_error=float(errs.min()),
            extra={
                "argmin_step": int(errs.argmin()),
                "final_grad_ratio": float(np.linalg.norm(g(w)) / np.linalg.norm(g(self.w0))),
                "final_train_loss": float(np.sum((self.X @ w - self.y) ** 2) / (2 * self.n)),
                "decoupled_decay_steps": math.log(1.0 / eps) / (adamw_lr * lam),
            },
        )


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"Invalid method: {method!r} (must be one of {', '.join(METHODS)})")


def _check_linear(method: str) -> None:
    if method not in LINEAR_METHODS:
        raise ValueError(
            f"Invalid method: {method!r} (closed form needs one of {', '.join(LINEAR_METHODS)})"
        )


# ----------------------------------------------------------------------------------------------
# the speedup table
# ----------------------------------------------------------------------------------------------
def fit_loglog_slope(lams: Sequence[float], steps: Sequence[float]) -> float:
    """Least-squares slope of ``log(steps)`` against ``log(λ)`` (−1 for GD, −1/2 for CDM)."""
    if len(lams) != len(steps) or len(lams) < 2:
        raise ValueError(
            f"Invalid lams: {len(lams)} points for {len(steps)} steps "
            "(need equal lengths, at least 2)"
        )
    x, y = np.log(np.asarray(lams, float)), np.log(np.asarray(steps, float))
    return float(np.polyfit(x, y, 1)[0])


@dataclass
class SpeedupTable:
    """Rows of :class:`StepsResult` and per-method log-log slopes (NaN if some λ not reached)."""

    rows: list[StepsResult]
    slopes: dict[str, float]
    problem: dict

    def steps(self, method: str) -> list[int | None]:
        """Step counts of one method, in λ order."""
        return [r.steps for r in self.rows if r.method == method]


def speedup_table(
    lams: Sequence[float] = (1e-2, 1e-3, 1e-4, 1e-5),
    methods: Sequence[str] = METHODS,
    eps: float = 1e-3,
    problem: LinearRegressionProblem | None = None,
    max_steps: int = 10**8,
    adamw_lr: float | None = None,
    adamw_steps: int = 100_000,
) -> SpeedupTable:
    """Steps to relative error ε for each method and λ, plus fitted log-log slopes.

    Theory: GD and heavy ball (fixed β) need ``∝ 1/(ηλ)`` steps (slope −1), CDM and Nesterov with
    critical momentum ``∝ 1/√(ηλ)`` (slope −1/2).
    """
    for m in methods:
        _check_method(m)
    problem = problem if problem is not None else LinearRegressionProblem()
    rows = [
        problem.steps_to_relative_error(
            m, lam, eps, max_steps=max_steps, adamw_lr=adamw_lr, adamw_steps=adamw_steps
        )
        for m in methods
        for lam in lams
    ]
    slopes = {}
    for m in methods:
        mine = [r for r in rows if r.method == m]
        ok = len(mine) >= 2 and all(r.reached for r in mine)
        slopes[m] = (
            fit_loglog_slope([r.lam for r in mine], [r.steps for r in mine]) if ok else math.nan
        )
    info = {
        "n": problem.n,
        "d": problem.d,
        "seed": problem.seed,
        "init_scale": problem.init_scale,
        "feature_scale": problem.feature_scale,
        "h_max": problem.h_max,
        "h_min": float(problem.h[-1]),
    }
    return SpeedupTable(rows=rows, slopes=slopes, problem=info)
