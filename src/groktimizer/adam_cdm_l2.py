"""AdamCDML2: CDM in Adam's metric whose fixed point is the ℓ2-regularised one.

For each parameter ``w`` (step size η, weight decay λ, damping ζ, metric scale s)::

    v   = β₂·v + (1 − β₂)·g²
    v̂   = v / (1 − β₂^t)                (t counts the updates of v, carried over from Adam)
    D   = max(√v̂, v_floor) + ε           (v_floor defaults to η·λ, see below)
    d   = (g + λ·w) / D                  (the decay is preconditioned with the gradient)
    buf = β·buf + d                      (first step: buf = d)
    w   = w − η·buf
    β   = max(0, 1 − ζ√(ηλ/s))²

Why: AdamCDM uses ``d = g/D + λw``, whose fixed point ``∇L = −λ·D·w`` minimises the D-weighted
objective ``L + (λ/2)·wᵀDw``. Here the whole direction is divided by the same positive D, so the
heavy ball stops where ``g + λw = 0``: the stationary point of ``L + (λ/2)‖w‖²``, the target of
the quadratic theory (the minimum-ℓ2-norm interpolant as λ → 0), whatever D is.

In Adam's metric a flat direction (g = 0) has curvature ``λ/D``. The momentum is set for the
typical one, ``λ/s`` with ``s`` a scalar summary of D (default: the median of D over all
entries at the first step, then kept, stored in the param group): flat directions with ``D ≈ s``
are critically damped at rate ``1 − ζ√(ηλ/s)``; those with ``D < s`` are under-damped and decay
at rate ``√β`` (the same modulus); those with ``D > s`` are over-damped (slower). Heavy ball is
stable for ``η·λ/D < 2(1 + β)``; the floor ``D ≥ η·λ`` keeps ``η·λ/D ≤ 1``. That bound is not
enough where entries see no gradient at all (pixels that are 0 in every training image): their
``D`` sits on the floor, ``η·λ/D = 1`` with β near 1 is an undamped swing, and on the digits
setting (MLP, init ×8) the knob-free run blew up within 50 steps of the switch (loss 9e6; 18
halvings of η did not stop it, since the floor halves with η). ``scale_floor=f`` floors D at
``f·s`` instead (the factor is then at most ``ηλ'/(f·s)``; the knob-free config uses it).

To match AdamCDM's flat-mode rate at the same η, use ``λ_ℓ2 = λ_AdamCDM · s``, or give
``metric_decay=True``: then ``weight_decay`` is in AdamCDM's units (the ℓ2 strength is
``weight_decay · s``, β = (1 − ζ√(ηλ))² as AdamCDM's), so the knob-free tuner of
``GROKtimizer`` sets it exactly as it sets AdamCDM's.

``init_from_adam(adam)`` copies ``exp_avg_sq`` and ``step`` from an Adam/AdamW optimizer over
the same parameter tensors (the metric carries over at the switch). One per-tensor path (no
foreach), state in ``self.state[p]``, so ``state_dict`` round-trips.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from .adam_cdm import AdamCDM
from .cdm import critical_momentum

__all__ = ["AdamCDML2", "metric_scale", "SCALE_RULES"]

SCALE_RULES = ("first", "track", "max")


def _real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check(name: str, value: Any, ok: bool, accepted: str) -> None:
    if not ok:
        raise ValueError(f"AdamCDML2: {name} must be {accepted}, got {value!r}")


def _denominator(v: Tensor, step: int, beta2: float, v_floor: float, eps: float) -> Tensor:
    return v.div(1 - beta2**step).sqrt_().clamp_(min=v_floor).add_(eps)


@torch.no_grad()
def metric_scale(
    exp_avg_sqs: list[Tensor], steps: list[int], beta2: float = 0.98, eps: float = 1e-8
) -> float:
    """Median over all entries of ``√v̂ + ε`` (the default ``s``; no floor applied)."""
    flat = [
        v.div(1 - beta2**t).sqrt().add_(eps).reshape(-1)
        for v, t in zip(exp_avg_sqs, steps, strict=True)
    ]
    return float(torch.cat(flat).float().median())


class AdamCDML2(Optimizer):
    """Heavy ball on ``(g + λw)/D``: Adam's metric on the whole direction, ℓ2 fixed point.

    Args:
        params: parameters or param groups.
        lr: step size η > 0.
        weight_decay: λ > 0 (ℓ2 strength; ``g + λw = 0`` at the fixed point).
        damping: ζ > 0, 1 = critical for a flat direction with ``D = s``.
        beta2: second-moment decay β₂ in [0, 1).
        eps: ε ≥ 0 added to the denominator.
        v_floor: lower bound ≥ 0 on √v̂; None (default) means η·λ (flat-mode stability).
        metric_scale: s > 0; None (default) measures it at the first step (median of D).
        momentum: explicit β in [0, 1), overriding the formula (0 gives preconditioned GD).
        metric_decay: ``weight_decay`` in units of s (ℓ2 strength ``weight_decay · s``).
        scale_floor: f > 0: floor √v̂ at ``f·s`` instead of ``v_floor`` (None: off). An entry
            that sees (almost) no gradient sits at the floor; under ``η·λ`` its flat-mode
            factor ``ηλ'/D`` is 1 (under-damped, and it swings with every change of D).
        scale_rule: how s (when not given) is measured: ``"first"`` once, at the first step;
            ``"track"`` at every step (λ' = λ·s follows the gradient's scale, as AdamCDM's
            decay does); ``"max"`` the largest value seen so far (λ' never weakens, and follows
            the gradient's scale when it rises, as it does after the switch on transformers).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        weight_decay: float,
        damping: float = 1.0,
        beta2: float = 0.98,
        eps: float = 1e-8,
        v_floor: float | None = None,
        metric_scale: float | None = None,
        momentum: float | None = None,
        metric_decay: bool = False,
        scale_floor: float | None = None,
        scale_rule: str = "first",
    ) -> None:
        _check("metric_decay", metric_decay, isinstance(metric_decay, bool), "a bool")
        _check("scale_rule", scale_rule, scale_rule in SCALE_RULES, f"one of {SCALE_RULES}")
        _check("lr", lr, _real(lr) and lr > 0, "a float > 0")
        _check("weight_decay", weight_decay, _real(weight_decay) and weight_decay > 0, "> 0")
        _check("damping", damping, _real(damping) and damping > 0, "a float > 0")
        _check("beta2", beta2, _real(beta2) and 0 <= beta2 < 1, "in [0, 1)")
        _check("eps", eps, _real(eps) and eps >= 0, "a float >= 0")
        _check("v_floor", v_floor, v_floor is None or (_real(v_floor) and v_floor >= 0), ">= 0")
        ok_s = metric_scale is None or (_real(metric_scale) and metric_scale > 0)
        _check("metric_scale", metric_scale, ok_s, "None or a float > 0")
        ok_m = momentum is None or (_real(momentum) and 0 <= momentum < 1)
        _check("momentum", momentum, ok_m, "None or a float in [0, 1)")
        ok_f = scale_floor is None or (_real(scale_floor) and scale_floor > 0)
        _check("scale_floor", scale_floor, ok_f, "None or a float > 0")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            damping=damping,
            beta2=beta2,
            eps=eps,
            v_floor=v_floor,
            metric_scale=metric_scale,
            momentum=momentum,
            metric_decay=metric_decay,
            scale_floor=scale_floor,
            scale_rule=scale_rule,
        )
        super().__init__(params, defaults)

    @staticmethod
    def l2_strength(group: dict[str, Any]) -> float:
        """The ℓ2 strength λ' of the direction ``(g + λ'w)/D`` (``weight_decay · s`` when
        ``metric_decay``; s must be known then)."""
        if not group.get("metric_decay"):
            return float(group["weight_decay"])
        s = group["metric_scale"]
        if s is None:
            raise RuntimeError("AdamCDML2: metric_scale is measured at the first step")
        return float(group["weight_decay"]) * float(s)

    def group_momentum(self, group: dict[str, Any]) -> float:
        """β at the group's current η, λ, ζ and s (explicit momentum if given). A group with
        λ = 0 (e.g. biases) takes the optimizer's default λ for its β, as AdamCDM does: β from
        its own λ would be 1, an undamped heavy ball."""
        if group["momentum"] is not None:
            return float(group["momentum"])
        wd = group["weight_decay"] if group["weight_decay"] > 0 else self.defaults["weight_decay"]
        kappa = group["lr"] * wd  # with metric_decay ηλ'/s = ηλ: s cancels
        if not group.get("metric_decay"):  # else the flat mode's curvature is λ/s
            s = group["metric_scale"]
            if s is None:
                raise RuntimeError("AdamCDML2: metric_scale is measured at the first step")
            kappa = kappa / s
        return critical_momentum(1.0, kappa, group["damping"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["momentum"] is not None or group.get("metric_decay") or group["metric_scale"]:
            group["momentum_used"] = self.group_momentum(group)  # known before the first step

    @classmethod
    def _floor(cls, group: dict[str, Any], s: float | None = None) -> float:
        """The floor on √v̂; ``s`` stands in for a metric scale not measured yet."""
        vf = group["v_floor"]
        if vf is not None:
            return float(vf)
        s = group["metric_scale"] if group["metric_scale"] is not None else s
        if group.get("scale_floor") is not None:
            return 0.0 if s is None else float(group["scale_floor"]) * float(s)
        if not group.get("metric_decay"):
            return group["lr"] * float(group["weight_decay"])
        return 0.0 if s is None else group["lr"] * float(group["weight_decay"]) * float(s)

    def _scale_now(self, group: dict[str, Any]) -> float | None:
        """s as the first step would measure it from the second moments held now (carried
        from Adam at the switch); None where no parameter of the group has one."""
        held = [p for p in group["params"] if int(self.state.get(p, {}).get("step", 0)) > 0]
        return self._scale_of(group, held) if held else None

    def _scale_of(self, group: dict[str, Any], params: list[Tensor]) -> float:
        """s measured over ``params``' second moments (``metric_scale``)."""
        return metric_scale(
            [self.state[p]["exp_avg_sq"] for p in params],
            [self.state[p]["step"] for p in params],
            group["beta2"],
            group["eps"],
        )

    # copies Adam's exp_avg_sq and step for shared parameters, exactly as AdamCDM does
    init_from_adam = AdamCDM.init_from_adam

    @torch.no_grad()
    def preconditioner(self) -> list[Tensor | None]:
        """``S = 1/√D`` per parameter (None where no second moment exists yet): the steep modes
        of ``D⁻¹H`` have the spectrum of ``S H S`` (what the knob-free tuner measures)."""
        return [None if d is None else d.rsqrt() for d in self.denominators()]

    @torch.no_grad()
    def denominators(self) -> list[Tensor | None]:
        """``D`` per parameter (None where no second moment exists yet). Before the first step
        the floor takes s from the second moments held now, so that the curvature probe at the
        switch sees the metric the steps will use. Measured (a+b mod 97, MLP, minibatches of
        64, seed 0): without the floor there, embedding rows of tokens absent from the last
        batches (v decayed towards 0) put the top curvature at 133,000 instead of 370, and
        phase 2's η 6x under the step cap; full-batch curvatures moved by < 0.1%."""
        out: list[Tensor | None] = []
        for group in self.param_groups:
            s_now = self._scale_now(group) if group["metric_scale"] is None else None
            floor = self._floor(group, s_now)
            for p in group["params"]:
                st = self.state.get(p, {})
                if "exp_avg_sq" not in st or int(st["step"]) == 0:
                    out.append(None)
                    continue
                out.append(
                    _denominator(
                        st["exp_avg_sq"],
                        int(st["step"]),
                        group["beta2"],
                        floor,
                        group["eps"],
                    )
                )
        return out

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta2, eps, lr = group["beta2"], group["eps"], group["lr"]
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                st = self.state[p]
                if "exp_avg_sq" not in st:
                    st["exp_avg_sq"] = torch.zeros_like(p)
                    st["step"] = 0
                st["step"] = int(st["step"]) + 1
                st["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            rule = group.get("scale_rule", "first")
            if (group["metric_scale"] is None or rule != "first") and params:
                s_now = self._scale_of(group, params)
                s_old = group["metric_scale"]
                keep_max = rule == "max" and s_old is not None
                group["metric_scale"] = max(s_old, s_now) if keep_max else s_now
            wd = self.l2_strength(group)
            beta = self.group_momentum(group)
            group["momentum_used"] = beta
            floor = self._floor(group)
            for p in params:
                st = self.state[p]
                denom = _denominator(st["exp_avg_sq"], st["step"], beta2, floor, eps)
                d = p.grad.add(p, alpha=wd).div_(denom)
                buf = st.get("momentum_buffer")
                if buf is None:
                    st["momentum_buffer"] = buf = d
                else:
                    buf.mul_(beta).add_(d)
                p.add_(buf, alpha=-lr)
        return loss
