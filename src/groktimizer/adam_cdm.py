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

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from .cdm import (
    NO_WEIGHT_DECAY_MESSAGE,
    _group_by_device_dtype,
    _is_real,
    check_damping,
    check_lr,
    check_weight_decay,
    critical_momentum,
)

__all__ = ["AdamCDM"]


class AdamCDM(Optimizer):
    """CDM on ``g/(√v̂ + ε) + λw``: Adam's second moment preconditions the gradient only.

    Args:
        params: parameters or param groups (a group may set ``lr``, ``weight_decay``,
            ``damping``, ``beta2``, ``eps``, ``v_floor``, ``freeze_v``).
        lr: step size η > 0.
        weight_decay: λ > 0 (a group may use 0; its β then comes from the optimizer-level λ).
        damping: ζ > 0, 1 = critical.
        beta2: second-moment decay β₂ in [0, 1).
        eps: ε ≥ 0 added to the denominator.
        v_floor: optional lower bound on √v̂ (a frozen metric without one can blow up).
        freeze_v: stop updating v (and its step count). A parameter without a second moment yet
            takes its first gradient to start one.
        foreach: multi-tensor path (default: on when all parameters are on CUDA).

    ``init_from_adam(adam)`` copies ``exp_avg_sq`` and ``step`` from an Adam/AdamW optimizer
    holding the same parameter tensors, so the metric carries over at the switch.
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
        foreach: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "damping": damping,
            "beta2": beta2,
            "eps": eps,
            "v_floor": v_floor,
            "freeze_v": bool(freeze_v),
            "foreach": foreach,
        }
        self._check_group(defaults)
        if weight_decay == 0:
            raise ValueError(NO_WEIGHT_DECAY_MESSAGE.replace("CDM", "AdamCDM", 1))
        super().__init__(params, defaults)

    @staticmethod
    def _check_group(group: dict[str, Any]) -> None:
        check_lr("AdamCDM", group["lr"])
        check_weight_decay("AdamCDM", group["weight_decay"])
        check_damping("AdamCDM", group["damping"])
        beta2, eps, v_floor = group["beta2"], group["eps"], group["v_floor"]
        if not _is_real(beta2) or not 0 <= beta2 < 1:
            raise ValueError(f"AdamCDM: beta2 must be in [0, 1), got {beta2!r}")
        if not _is_real(eps) or eps < 0:
            raise ValueError(f"AdamCDM: eps must be a float >= 0, got {eps!r}")
        if v_floor is not None and (not _is_real(v_floor) or v_floor < 0):
            raise ValueError(f"AdamCDM: v_floor must be None or a float >= 0, got {v_floor!r}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        group["momentum_used"] = self.group_momentum(group)

    def group_momentum(self, group: dict[str, Any]) -> float:
        """β = max(0, 1 − ζ√(ηλ))², λ the group's decay or, if 0, the optimizer-level one."""
        wd = group["weight_decay"] if group["weight_decay"] > 0 else self.defaults["weight_decay"]
        return critical_momentum(float(group["lr"]), wd, group["damping"])

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
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One AdamCDM step for every param group; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            beta = self.group_momentum(group)
            group["momentum_used"] = beta
            params, grads, vs, bufs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamCDM does not support sparse gradients")
                state = self.state[p]
                if "exp_avg_sq" not in state:
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["step"] = 0
                if not group["freeze_v"] or state["step"] == 0:
                    state["step"] += 1
                    update_v = True
                else:
                    update_v = False
                params.append(p)
                grads.append(p.grad)
                vs.append((state["exp_avg_sq"], update_v))
                bufs.append(state.get("momentum_buffer"))
                steps.append(state["step"])
            if not params:
                continue
            foreach = group["foreach"]
            if foreach is None:
                foreach = all(p.is_cuda for p in params)
            core = _adam_cdm_foreach if foreach else _adam_cdm_single_tensor
            core(
                params,
                grads,
                vs,
                bufs,
                steps,
                lr=float(group["lr"]),
                weight_decay=group["weight_decay"],
                momentum=beta,
                beta2=group["beta2"],
                eps=group["eps"],
                v_floor=group["v_floor"],
            )
            for p, buf in zip(params, bufs, strict=True):
                self.state[p]["momentum_buffer"] = buf
        return loss


def _adam_cdm_single_tensor(
    params: list[Tensor],
    grads: list[Tensor],
    vs: list[tuple[Tensor, bool]],
    bufs: list[Tensor | None],
    steps: list[int],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    beta2: float,
    eps: float,
    v_floor: float | None,
) -> None:
    for i, p in enumerate(params):
        g = grads[i]
        v, update_v = vs[i]
        if update_v:
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = v.div(1 - beta2 ** steps[i]).sqrt_()
        if v_floor is not None:
            denom.clamp_(min=v_floor)
        denom.add_(eps)
        d = g.div(denom)
        if weight_decay != 0:
            d.add_(p, alpha=weight_decay)
        buf = bufs[i]
        if buf is None:
            bufs[i] = d
        elif momentum == 0:
            buf.copy_(d)
        else:
            buf.mul_(momentum).add_(d)
        p.add_(bufs[i], alpha=-lr)


def _adam_cdm_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    vs: list[tuple[Tensor, bool]],
    bufs: list[Tensor | None],
    steps: list[int],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    beta2: float,
    eps: float,
    v_floor: float | None,
) -> None:
    for idx in _group_by_device_dtype(params).values():
        ps = [params[i] for i in idx]
        gs = [grads[i] for i in idx]
        upd = [i for i in idx if vs[i][1]]
        if upd:
            vu = [vs[i][0] for i in upd]
            gu = [grads[i] for i in upd]
            torch._foreach_mul_(vu, beta2)
            torch._foreach_addcmul_(vu, gu, gu, value=1 - beta2)
        denom = torch._foreach_div([vs[i][0] for i in idx], [1 - beta2 ** steps[i] for i in idx])
        torch._foreach_sqrt_(denom)
        if v_floor is not None:
            torch._foreach_clamp_min_(denom, v_floor)
        torch._foreach_add_(denom, eps)
        ds = torch._foreach_div(gs, denom)
        if weight_decay != 0:
            torch._foreach_add_(ds, ps, alpha=weight_decay)
        old = [j for j, i in enumerate(idx) if bufs[i] is not None]
        for j, i in enumerate(idx):
            if bufs[i] is None:
                bufs[i] = ds[j]
        if old:
            old_bufs = [bufs[idx[j]] for j in old]
            old_ds = [ds[j] for j in old]
            if momentum == 0:
                torch._foreach_copy_(old_bufs, old_ds)
            else:
                torch._foreach_mul_(old_bufs, momentum)
                torch._foreach_add_(old_bufs, old_ds)
        torch._foreach_add_(ps, [bufs[i] for i in idx], alpha=-lr)
