"""Gradient filters of Grokfast (Lee et al. 2024), faithful to the reference ``grokfast.py``.

Applied between ``backward()`` and ``optimizer.step()``; they rewrite ``p.grad`` in place.

- ``GradFilterEMA(alpha, lamb)``: ``ema = α·ema + (1−α)·g``; ``g ← g + λ·ema``. As in the
  reference, the EMA starts from the first gradient (and the first update is then applied to it,
  so ``ema_1 = g_1``).
- ``GradFilterMA(window, lamb, filter_type, warmup)``: keeps the last ``window`` raw gradients;
  ``g ← g + λ·mean(last w)`` (``filter_type='sum'``: the sum). With ``warmup=True`` nothing is
  changed until the window is full, as in the reference.

The EMA and window are built from the raw gradients (before amplification). Filter state is
indexed by the position of the parameter in the sequence given to ``apply``: pass the same
parameters in the same order at every step (``model.parameters()`` does).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .wrapper import OptimizerWrapper

__all__ = ["GradFilter", "GradFilterEMA", "GradFilterMA", "FilteredOptimizer"]


class GradFilter:
    """Base class: ``apply(params)`` rewrites the ``.grad`` of each parameter that has one."""

    def apply(self, params: Iterable[Tensor]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


def _check_lamb(owner: str, lamb: Any) -> None:
    if not isinstance(lamb, (int, float)) or isinstance(lamb, bool) or not math.isfinite(lamb):
        raise ValueError(f"{owner}: lamb must be a finite float, got {lamb!r}")


class GradFilterEMA(GradFilter):
    """Grokfast-EMA: ``ema = α·ema + (1−α)·g``, then ``g ← g + λ·ema`` (ema starts at g₁)."""

    def __init__(self, alpha: float = 0.98, lamb: float = 2.0) -> None:
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 <= alpha < 1:
            raise ValueError(f"GradFilterEMA: alpha must be in [0, 1), got {alpha!r}")
        _check_lamb("GradFilterEMA", lamb)
        self.alpha = float(alpha)
        self.lamb = float(lamb)
        self.ema: list[Tensor | None] = []

    @torch.no_grad()
    def apply(self, params: Iterable[Tensor]) -> None:
        for i, p in enumerate(params):
            if i >= len(self.ema):
                self.ema.append(None)
            if p.grad is None:
                continue
            g = p.grad
            if self.ema[i] is None:
                self.ema[i] = g.detach().clone()
            ema = self.ema[i]
            ema.mul_(self.alpha).add_(g, alpha=1 - self.alpha)
            p.grad = g + ema * self.lamb

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "lamb": self.lamb, "ema": [e for e in self.ema]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha, self.lamb = float(state["alpha"]), float(state["lamb"])
        self.ema = [None if e is None else e.detach().clone() for e in state["ema"]]


class GradFilterMA(GradFilter):
    """Grokfast-MA: ``g ← g + λ·mean(g_{t−w+1..t})`` (or the sum), after a full window if warmup."""

    def __init__(
        self,
        window: int = 100,
        lamb: float = 5.0,
        filter_type: str = "mean",
        warmup: bool = True,
    ) -> None:
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"GradFilterMA: window must be an int >= 1, got {window!r}")
        _check_lamb("GradFilterMA", lamb)
        if filter_type not in ("mean", "sum"):
            raise ValueError(
                f"GradFilterMA: filter_type must be 'mean' or 'sum', got {filter_type!r}"
            )
        self.window = window
        self.lamb = float(lamb)
        self.filter_type = filter_type
        self.warmup = bool(warmup)
        self.history: list[deque[Tensor] | None] = []

    @torch.no_grad()
    def apply(self, params: Iterable[Tensor]) -> None:
        for i, p in enumerate(params):
            if i >= len(self.history):
                self.history.append(None)
            if p.grad is None:
                continue
            if self.history[i] is None:
                self.history[i] = deque(maxlen=self.window)
            hist = self.history[i]
            hist.append(p.grad.detach().clone())
            if self.warmup and len(hist) < self.window:
                continue
            total = hist[0].clone()
            for g in list(hist)[1:]:  # summed oldest first, the reference's order
                total.add_(g)
            avg = total / len(hist) if self.filter_type == "mean" else total
            p.grad = p.grad + avg * self.lamb

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "lamb": self.lamb,
            "filter_type": self.filter_type,
            "warmup": self.warmup,
            "history": [None if h is None else list(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window = int(state["window"])
        self.lamb = float(state["lamb"])
        self.filter_type = state["filter_type"]
        self.warmup = bool(state["warmup"])
        self.history = [
            None if h is None else deque((g.detach().clone() for g in h), maxlen=self.window)
            for h in state["history"]
        ]


class FilteredOptimizer(OptimizerWrapper):
    """Wraps an optimizer so that ``step()`` first applies a gradient filter.

    ``param_groups``, ``state`` and ``defaults`` are the wrapped optimizer's, so LR schedulers
    and gradient clipping see the real thing. The filter sees the parameters of all groups in
    order.
    """

    def __init__(self, optimizer: Optimizer, grad_filter: GradFilter) -> None:
        if not isinstance(optimizer, Optimizer):
            raise ValueError(
                f"FilteredOptimizer: optimizer must be a torch Optimizer, got {optimizer!r}"
            )
        if not isinstance(grad_filter, GradFilter):
            raise ValueError(
                f"FilteredOptimizer: grad_filter must be a GradFilter, got {grad_filter!r}"
            )
        super().__init__()
        self.optimizer = optimizer
        self.grad_filter = grad_filter

    @property
    def current(self) -> Optimizer:
        return self.optimizer

    def _params(self) -> list[Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.grad_filter.apply(self._params())
        self.optimizer.step()
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"optimizer": self.optimizer.state_dict(), "filter": self.grad_filter.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.grad_filter.load_state_dict(state_dict["filter"])

    def __repr__(self) -> str:
        return f"FilteredOptimizer({self.optimizer!r}, {self.grad_filter!r})"
