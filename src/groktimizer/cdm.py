"""Critically Damped Momentum (CDM): heavy ball with coupled weight decay and critical momentum.

Update for each parameter ``w`` of a group with step size η, weight decay λ, damping ζ::

    d   = g + λ·w                       (coupled decay: it goes through the momentum buffer)
    buf = β·buf + d                     (first step: buf = d)
    w   = w − η·buf                     (Nesterov: w = w − η·(d + β·buf))

    β   = max(0, 1 − ζ·√(ηλ))²          (Nesterov: β_N = max(0, (1 − ζ√(ηλ)) / (1 + ζ√(ηλ))))

On a flat direction the loss contributes nothing and the only curvature is λ; the momentum above
puts a double root of the heavy-ball recursion at ``1 − √(ηλ)`` (ζ = 1), so the flat mode shrinks
by ``1 − ζ√(ηλ)`` per step instead of plain gradient descent's ``1 − ηλ``.

The update is exactly ``torch.optim.SGD(lr=η, momentum=β, dampening=0, weight_decay=λ)``; what
CDM adds is that β is derived from (η, λ, ζ) of each param group at every step, so an LR
scheduler that changes ``group['lr']`` also moves β. The β used at the last step is stored in
``group['momentum_used']`` for logging.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT, _default_to_fused_or_foreach

__all__ = ["CDM", "cdm", "critical_momentum"]

NO_WEIGHT_DECAY_MESSAGE = (
    "CDM needs weight_decay > 0 to set the critical momentum (beta depends on "
    "sqrt(lr*weight_decay)); pass momentum= explicitly or use SGD"
)


def critical_momentum(
    lr: float, weight_decay: float, damping: float = 1.0, nesterov: bool = False
) -> float:
    """Momentum that damps the flat (curvature λ) mode with damping ratio ζ.

    Heavy ball: ``β = max(0, 1 − ζ√(ηλ))²``; Nesterov: ``β_N = max(0, (1 − s)/(1 + s))`` with
    ``s = ζ√(ηλ)``. At ζ = 1 both make the flat-mode recursion critically damped (double root
    ``1 − √(ηλ)``).
    """
    s = damping * math.sqrt(lr * weight_decay)
    if nesterov:
        return max(0.0, (1.0 - s) / (1.0 + s))
    return max(0.0, 1.0 - s) ** 2


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_lr(owner: str, lr: Any) -> None:
    if isinstance(lr, str):
        raise ValueError(
            f"{owner}: lr must be a float > 0, got {lr!r} (lr='auto' is resolved by GROKtimizer)"
        )
    if not _is_real(lr) or lr <= 0:
        raise ValueError(f"{owner}: lr must be a float > 0, got {lr!r}")


def check_weight_decay(owner: str, weight_decay: Any) -> None:
    if not _is_real(weight_decay) or weight_decay < 0:
        raise ValueError(f"{owner}: weight_decay must be a float >= 0, got {weight_decay!r}")


def check_damping(owner: str, damping: Any) -> None:
    if not _is_real(damping) or damping <= 0:
        raise ValueError(f"{owner}: damping must be a float > 0 (1 = critical), got {damping!r}")


def check_momentum(owner: str, momentum: Any) -> None:
    if momentum is None:
        return
    if not _is_real(momentum) or not 0 <= momentum < 1:
        raise ValueError(f"{owner}: momentum must be None or in [0, 1), got {momentum!r}")


class CDM(Optimizer):
    """Critically Damped Momentum: heavy ball on ``L(w) + (λ/2)‖w‖²`` with β set by (η, λ, ζ).

    Args:
        params: parameters or param groups. A group may set its own ``lr``, ``weight_decay``,
            ``damping``, ``nesterov`` or ``momentum``.
        lr: step size η > 0.
        weight_decay: λ ≥ 0, coupled (added to the gradient before the momentum buffer).
        damping: ζ > 0; 1 is critical, < 1 under-damped, > 1 over-damped.
        nesterov: use the Nesterov form and its critical momentum β_N.
        momentum: explicit β in [0, 1); overrides the critical value.
        foreach: use the multi-tensor ``torch._foreach_*`` path (default: chosen as torch's own
            optimizers choose it, i.e. on for tensors on a device with foreach kernels such as
            CUDA). Both paths give the same numbers.
        maximize: ascend instead of descend (the loss gradient is negated; decay is not).

    β per group, each step: explicit ``momentum`` if set, else ``critical_momentum(lr, λ_β, ζ)``
    where ``λ_β`` is the group's weight decay, or, for a group with weight decay 0 (biases and
    norm gains excluded from decay), the optimizer-level ``weight_decay``: such a group moves with
    the same momentum as the rest of the model but is not decayed.

    Subclasses precondition the gradient by overriding ``_directions`` (see ``AdamCDM``); the
    heavy-ball core (``cdm``) is shared.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        weight_decay: float,
        damping: float = 1.0,
        nesterov: bool = False,
        momentum: float | None = None,
        foreach: bool | None = None,
        maximize: bool = False,
        **extra: Any,
    ) -> None:
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "damping": damping,
            "nesterov": bool(nesterov),
            "momentum": momentum,
            "foreach": foreach,
            "maximize": bool(maximize),
            **extra,
        }
        self._check_group(defaults)
        super().__init__(params, defaults)

    @property
    def _name(self) -> str:
        return type(self).__name__

    def _check_group(self, group: dict[str, Any]) -> None:
        """One-line ValueErrors naming the argument and its accepted range."""
        check_lr(self._name, group["lr"])
        check_weight_decay(self._name, group["weight_decay"])
        check_damping(self._name, group["damping"])
        check_momentum(self._name, group["momentum"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        if group["momentum"] is None and self._beta_weight_decay(group) == 0:
            raise ValueError(NO_WEIGHT_DECAY_MESSAGE.replace("CDM", self._name, 1))
        group["momentum_used"] = self.group_momentum(group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("nesterov", False)
            group.setdefault("momentum", None)

    def _beta_weight_decay(self, group: dict[str, Any]) -> float:
        wd = group["weight_decay"]
        return wd if wd > 0 else self.defaults["weight_decay"]

    def group_momentum(self, group: dict[str, Any]) -> float:
        """β for ``group`` at its current lr: explicit momentum, else the critical value."""
        if group["momentum"] is not None:
            return float(group["momentum"])
        return critical_momentum(
            float(group["lr"]), self._beta_weight_decay(group), group["damping"], group["nesterov"]
        )

    def _directions(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], foreach: bool
    ) -> list[Tensor]:
        """The loss direction fed to the heavy-ball core: the gradient itself for CDM."""
        return grads

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step for every param group; ``closure`` re-evaluates the loss (with grad)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            bufs: list[Tensor | None] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{self._name} does not support sparse gradients")
                params.append(p)
                grads.append(p.grad)
                bufs.append(self.state[p].get("momentum_buffer"))

            beta = self.group_momentum(group)
            group["momentum_used"] = beta
            if not params:
                continue
            foreach = group["foreach"]
            if foreach is None:
                _, foreach = _default_to_fused_or_foreach(params, differentiable=False)
            directions = self._directions(group, params, grads, foreach)
            cdm(
                params,
                directions,
                bufs,
                foreach=foreach,
                lr=float(group["lr"]),
                weight_decay=group["weight_decay"],
                momentum=beta,
                nesterov=group["nesterov"],
                maximize=group["maximize"] and directions is grads,
            )
            for p, buf in zip(params, bufs, strict=True):
                self.state[p]["momentum_buffer"] = buf
        return loss


def cdm(
    params: list[Tensor],
    directions: list[Tensor],
    bufs: list[Tensor | None],
    *,
    foreach: bool,
    lr: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    maximize: bool = False,
) -> None:
    """Functional heavy-ball core: ``d = ±g + λw; buf = β·buf + d; w -= η·buf`` (Nesterov:
    ``w -= η·(d + β·buf)``). ``directions`` are the (possibly preconditioned) loss gradients;
    ``maximize`` negates them. ``bufs`` is updated in place (a None entry starts from ``d``)."""
    core = _cdm_foreach if foreach else _cdm_single_tensor
    core(
        params,
        directions,
        bufs,
        lr=lr,
        weight_decay=weight_decay,
        momentum=momentum,
        nesterov=nesterov,
        maximize=maximize,
    )


def _cdm_single_tensor(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor | None],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    maximize: bool,
) -> None:
    for i, p in enumerate(params):
        d = grads[i] if not maximize else -grads[i]
        if weight_decay != 0:
            d = d.add(p, alpha=weight_decay)
        buf = bufs[i]
        if buf is None:
            buf = torch.clone(d).detach()
            bufs[i] = buf
        elif momentum == 0:
            buf.copy_(d)  # not mul_(0): an inf in the old buffer would leave a nan
        else:
            buf.mul_(momentum).add_(d)
        update = d.add(buf, alpha=momentum) if nesterov else buf
        p.add_(update, alpha=-lr)


def _cdm_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor | None],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    maximize: bool,
) -> None:
    """The same arithmetic, one ``_foreach`` call per op and (device, dtype) bucket."""
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, bufs],  # type: ignore[list-item]
        with_indices=True,
    )
    for (ps, ds, dev_bufs), indices in grouped.values():
        if maximize:
            ds = torch._foreach_neg(ds)
        if weight_decay != 0:
            ds = torch._foreach_add(ds, ps, alpha=weight_decay)
        if all(b is not None for b in dev_bufs):
            if momentum == 0:
                torch._foreach_copy_(dev_bufs, ds)
            else:
                torch._foreach_mul_(dev_bufs, momentum)
                torch._foreach_add_(dev_bufs, ds)
            bs = dev_bufs
        else:
            bs = []
            for j, b in enumerate(dev_bufs):
                if b is None:
                    b = torch.clone(ds[j]).detach()
                    bufs[indices[j]] = b
                elif momentum == 0:
                    b.copy_(ds[j])
                else:
                    b.mul_(momentum).add_(ds[j])
                bs.append(b)
        updates = torch._foreach_add(ds, bs, alpha=momentum) if nesterov else bs
        torch._foreach_add_(ps, updates, alpha=-lr)
