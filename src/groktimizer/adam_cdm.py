"""AdamCDM: CDM with the loss gradient measured in Adam's metric (phase 2 for transformers).

For each parameter ``w`` (step size η, weight decay λ, damping ζ)::

    v   = β₂·v + (1 − β₂)·g²            (skipped when the metric is frozen)
    v̂   = v / (1 − β₂^t)                (t counts the updates of v, carried over from Adam)
    d   = g / (max(√v̂, v_floor) + ε) + λ·w
    buf = β·buf + d                      (first step: buf = d)
    w   = w − η·buf
    β   = max(0, 1 − ζ√(ηλ))²

The decay term is not preconditioned, so a flat direction (g = 0) sees curvature λ and shrinks
at the CDM rate ``1 − ζ√(ηλ)``, while steep directions see Adam's preconditioned curvature.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from .cdm import CDM, _is_real

__all__ = ["AdamCDM", "precondition"]


class AdamCDM(CDM):
    """CDM on ``g/(√v̂ + ε) + λw``: Adam's second moment preconditions the gradient only.

    A ``CDM`` whose loss direction is preconditioned (as torch's AdamW builds on Adam): the
    heavy-ball core, Nesterov, ``maximize``, the ``momentum`` override and zero-decay groups are
    CDM's.

    Args:
        params: parameters or param groups (a group may set any argument below but foreach).
        lr: step size η > 0.
        weight_decay: λ ≥ 0 (λ > 0 unless ``momentum`` is given; a group may use 0, its β then
            comes from the optimizer-level λ).
        damping: ζ > 0, 1 = critical.
        beta2: second-moment decay β₂ in [0, 1).
        eps: ε ≥ 0 added to the denominator.
        v_floor: optional lower bound ≥ 0 on √v̂ (a frozen metric without one can blow up).
        freeze_v: stop updating v (and its step count). A parameter without a second moment yet
            takes its first gradient to start one.
        nesterov, momentum, foreach, maximize: as in ``CDM``.

    ``init_from_adam(adam)`` copies ``exp_avg_sq`` and ``step`` from an Adam/AdamW optimizer
    holding the same parameter tensors, so the metric carries over at the switch.
    ``preconditioner()`` returns ``1/√(max(√v̂, v_floor) + ε)`` per parameter: the scaling ``S``
    with which ``S H S`` is the curvature the steep modes see (``groktimizer.curvature``).
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
        freeze_v: bool = False,
        nesterov: bool = False,
        momentum: float | None = None,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            weight_decay=weight_decay,
            damping=damping,
            nesterov=nesterov,
            momentum=momentum,
            foreach=foreach,
            maximize=maximize,
            beta2=beta2,
            eps=eps,
            v_floor=v_floor,
            freeze_v=bool(freeze_v),
        )

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        beta2, eps, v_floor = group["beta2"], group["eps"], group["v_floor"]
        if not _is_real(beta2) or not 0 <= beta2 < 1:
            raise ValueError(f"AdamCDM: beta2 must be in [0, 1), got {beta2!r}")
        if not _is_real(eps) or eps < 0:
            raise ValueError(f"AdamCDM: eps must be a float >= 0, got {eps!r}")
        if v_floor is not None and (not _is_real(v_floor) or v_floor < 0):
            raise ValueError(f"AdamCDM: v_floor must be None or a float >= 0, got {v_floor!r}")

    @torch.no_grad()
    def init_from_adam(self, adam: Optimizer) -> int:
        """Copy Adam's second moment ``exp_avg_sq`` and its ``step`` for shared parameters.

        Returns the number of parameters whose metric was carried over. Adam's own β₂ is not
        copied: v keeps updating with this optimizer's ``beta2``.
        """
        carried = 0
        for group in self.param_groups:
            for p in group["params"]:
                src = adam.state.get(p, {})
                if "exp_avg_sq" not in src:
                    continue
                state = self.state[p]
                state["exp_avg_sq"] = src["exp_avg_sq"].detach().clone()
                state["step"] = int(src["step"])
                carried += 1
        return carried

    @torch.no_grad()
    def preconditioner(self) -> list[Tensor | None]:
        """``S = 1/√D`` per parameter of every group (None where no second moment exists yet),
        ``D = max(√v̂, v_floor) + ε``; the steep modes of AdamCDM see the curvature of ``S H S``."""
        out: list[Tensor | None] = []
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p, {})
                if "exp_avg_sq" not in st or int(st["step"]) == 0:
                    out.append(None)
                    continue
                d = _denominator(st["exp_avg_sq"], int(st["step"]), group)
                out.append(d.rsqrt_())
        return out

    def _directions(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], foreach: bool
    ) -> list[Tensor]:
        vs: list[Tensor] = []
        update_v: list[bool] = []
        steps: list[int] = []
        for p in params:
            state = self.state[p]
            if "exp_avg_sq" not in state:
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = 0
            upd = not group["freeze_v"] or state["step"] == 0
            if upd:
                state["step"] += 1
            vs.append(state["exp_avg_sq"])
            update_v.append(upd)
            steps.append(state["step"])
        return precondition(
            grads,
            vs,
            update_v,
            steps,
            foreach=foreach,
            beta2=group["beta2"],
            eps=group["eps"],
            v_floor=group["v_floor"],
            maximize=group["maximize"],
        )


def _denominator(v: Tensor, step: int, group: dict[str, Any]) -> Tensor:
    denom = v.div(1 - group["beta2"] ** step).sqrt_()
    if group["v_floor"] is not None:
        denom.clamp_(min=group["v_floor"])
    return denom.add_(group["eps"])


def precondition(
    grads: list[Tensor],
    vs: list[Tensor],
    update_v: list[bool],
    steps: list[int],
    *,
    foreach: bool,
    beta2: float,
    eps: float,
    v_floor: float | None,
    maximize: bool = False,
) -> list[Tensor]:
    """``v ← β₂v + (1−β₂)g²`` where ``update_v``; returns ``±g / (max(√v̂, v_floor) + ε)``
    (new tensors; ``v̂ = v/(1 − β₂^step)``). Single-tensor and foreach paths agree."""
    if not foreach:
        out = []
        for g, v, upd, t in zip(grads, vs, update_v, steps, strict=True):
            if upd:
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = v.div(1 - beta2**t).sqrt_()
            if v_floor is not None:
                denom.clamp_(min=v_floor)
            denom.add_(eps)
            out.append(g.div(denom) if not maximize else g.neg().div_(denom))
        return out
    out: list[Tensor] = [None] * len(grads)  # type: ignore[list-item]
    grouped = Optimizer._group_tensors_by_device_and_dtype([grads, vs], with_indices=True)  # type: ignore[list-item]
    for (gs, dvs), indices in grouped.values():
        upd = [j for j, i in enumerate(indices) if update_v[i]]
        if upd:
            vu, gu = [dvs[j] for j in upd], [gs[j] for j in upd]
            torch._foreach_mul_(vu, beta2)
            torch._foreach_addcmul_(vu, gu, gu, value=1 - beta2)
        denom = torch._foreach_div(dvs, [1 - beta2 ** steps[i] for i in indices])
        torch._foreach_sqrt_(denom)
        if v_floor is not None:
            torch._foreach_clamp_min_(denom, v_floor)
        torch._foreach_add_(denom, eps)
        ds = torch._foreach_div(torch._foreach_neg(gs) if maximize else gs, denom)
        for j, i in enumerate(indices):
            out[i] = ds[j]
    return out
