"""GROKtimizer: phase 1 (reach interpolation fast) -> switch -> phase 2 (CDM with weight decay).

Both phase optimizers are built at construction over the same parameter groups, so a bad
argument fails at once. ``param_groups``, ``state`` and ``defaults`` are those of the active
phase, so gradient clipping and code that reads ``param_groups[i]['lr']`` see the optimizer
actually stepping. An LR scheduler belongs to one phase: build it on ``opt.phase2`` (or on ``opt``
after the switch); a scheduler built on ``opt`` in phase 1 keeps phase-1 base learning rates.

Param groups given as dicts hold the phase-2 settings (e.g. ``{'params': biases,
'weight_decay': 0.0}``); phase-1 settings for a group go in an optional nested ``'phase1'`` dict.

``lr='auto'``: at the switch, power iteration on Hessian-vector products of the curvature closure
estimates ``h_max`` and every phase-2 group gets ``η = c/(|h_max| + λ)``, ``c = lr_auto_safety``.
The curvature is that of the raw loss: right for CDM, not for AdamCDM, whose steep modes see
Adam's preconditioned curvature (give AdamCDM an explicit lr).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .cdm import CDM, check_lr
from .curvature import auto_lr, top_eigenvalue
from .switch import AccuracySwitch, SwitchCriterion
from .wrapper import Event, OptimizerWrapper, observe

__all__ = ["GROKtimizer", "default_phase1"]

OptimizerFactory = Callable[[Any], Optimizer]
LossClosure = Callable[[], Tensor]

default_phase1: OptimizerFactory = functools.partial(
    torch.optim.AdamW, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.98)
)

_AUTO_LR_PLACEHOLDER = 1.0  # phase-2 lr until the switch measures the curvature


def _normalize_groups(params: Any) -> list[dict[str, Any]]:
    if isinstance(params, Tensor):
        raise TypeError("GROKtimizer: params must be an iterable of tensors or dicts, got a Tensor")
    groups = list(params)
    if not groups:
        raise ValueError("GROKtimizer: params must be a non-empty iterable, got an empty one")
    if not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    out = []
    for g in groups:
        g = dict(g)
        ps = g["params"]
        g["params"] = [ps] if isinstance(ps, Tensor) else list(ps)
        out.append(g)
    return out


class GROKtimizer(OptimizerWrapper):
    """Biphasic optimizer: ``phase1`` until the switch criterion fires, then ``phase2``.

    Args:
        params: parameters or param groups (group keys are phase-2 settings; ``'phase1'`` holds
            a dict of phase-1 settings for that group).
        phase1: ``params -> Optimizer`` (default: AdamW lr 1e-3, weight decay 0, betas
            (0.9, 0.98)).
        phase2: ``params -> Optimizer`` (default: ``CDM(lr, weight_decay, damping, nesterov)``;
            then ``lr`` and ``weight_decay`` are required). With ``phase2`` given, ``lr`` may
            only be None or ``'auto'`` and ``weight_decay`` must be None.
        lr: phase-2 step size η, or ``'auto'`` (measured at the switch).
        weight_decay: phase-2 λ > 0.
        damping: ζ > 0 for the default CDM.
        nesterov: Nesterov form of the default CDM.
        switch: a ``SwitchCriterion`` (default: ``AccuracySwitch(0.999, patience=1)``).
        lr_auto_safety: c in ``η = c/(|h_max| + λ)``.
        lr_auto_iters, lr_auto_tol: power-iteration budget and tolerance.
        curvature_closure: ``() -> loss`` with graph on the full training batch, for ``'auto'``.
    """

    def __init__(
        self,
        params: Any,
        phase1: OptimizerFactory | None = None,
        phase2: OptimizerFactory | None = None,
        lr: float | str | None = None,
        weight_decay: float | None = None,
        damping: float = 1.0,
        nesterov: bool = False,
        switch: SwitchCriterion | None = None,
        lr_auto_safety: float = 0.5,
        lr_auto_iters: int = 100,
        lr_auto_tol: float = 1e-4,
        curvature_closure: LossClosure | None = None,
    ) -> None:
        self.lr_auto = lr == "auto"
        if isinstance(lr, str) and not self.lr_auto:
            raise ValueError(f"GROKtimizer: lr must be a float > 0 or 'auto', got {lr!r}")
        if not (isinstance(lr_auto_safety, (int, float)) and lr_auto_safety > 0):
            raise ValueError(
                f"GROKtimizer: lr_auto_safety must be a float > 0, got {lr_auto_safety!r}"
            )
        if not (isinstance(lr_auto_iters, int) and lr_auto_iters >= 1):
            raise ValueError(
                f"GROKtimizer: lr_auto_iters must be an int >= 1, got {lr_auto_iters!r}"
            )
        if switch is not None and not isinstance(switch, SwitchCriterion):
            raise ValueError(
                f"GROKtimizer: switch must be a SwitchCriterion or None, got {switch!r}"
            )

        if phase2 is None:
            if lr is None or weight_decay is None:
                raise ValueError(
                    "GROKtimizer: lr and weight_decay are required for the default CDM phase 2, "
                    f"got lr={lr!r}, weight_decay={weight_decay!r}"
                )
            if not self.lr_auto:
                check_lr("GROKtimizer", lr)
            phase2 = functools.partial(
                CDM,
                lr=_AUTO_LR_PLACEHOLDER if self.lr_auto else lr,
                weight_decay=weight_decay,
                damping=damping,
                nesterov=nesterov,
            )
        elif (lr is not None and not self.lr_auto) or weight_decay is not None:
            raise ValueError(
                "GROKtimizer: with phase2 given, set lr/weight_decay in phase2 itself "
                f"(lr may only be None or 'auto'), got lr={lr!r}, weight_decay={weight_decay!r}"
            )

        super().__init__()
        groups = _normalize_groups(params)
        p1_groups = [{"params": g["params"], **g.get("phase1", {})} for g in groups]
        p2_groups = [{k: v for k, v in g.items() if k != "phase1"} for g in groups]
        self.phase1: Optimizer = (phase1 or default_phase1)(p1_groups)
        self.phase2: Optimizer = phase2(p2_groups)

        self.criterion: SwitchCriterion = switch if switch is not None else AccuracySwitch()
        self.lr_auto_safety = float(lr_auto_safety)
        self.lr_auto_iters = lr_auto_iters
        self.lr_auto_tol = lr_auto_tol
        self._curvature_closure = curvature_closure
        self._phase = 1
        self.switch_step: int | None = None
        self.num_steps = 0
        self.auto_lr_record: dict[str, Any] | None = None
        self.metric_carried = 0

    # -- the active phase, seen as a plain optimizer ------------------------------------------
    @property
    def phase(self) -> int:  # type: ignore[override]
        """1 before the switch, 2 after."""
        return self._phase

    @property
    def current(self) -> Optimizer:
        return self.phase1 if self._phase == 1 else self.phase2

    @property
    def active(self) -> Optimizer:
        """The phase optimizer taking the steps now (``current``)."""
        return self.current

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step of the active phase."""
        # Not wrapped by Optimizer.profile_hook_step (``step.hooked`` below): the active phase's
        # own wrapper already labels the step for the profiler and runs the global hooks; a
        # second wrapper cost ~25 us a step (10-20% of a small model's CDM step). Hooks
        # registered on this object run here.
        args: tuple[Any, ...] = (self,) if closure is None else (self, closure)
        kwargs: dict[str, Any] = {}
        for pre_hook in self._optimizer_step_pre_hooks.values():
            result = pre_hook(self, args, kwargs)
            if result is not None:
                args, kwargs = result
        loss = self.active.step(*args[1:], **kwargs)
        self.num_steps += 1
        for post_hook in self._optimizer_step_post_hooks.values():
            post_hook(self, args, kwargs)
        return loss

    step.hooked = True  # type: ignore[attr-defined]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        p1 = group.pop("phase1", {})
        self.phase1.add_param_group({"params": group["params"], **p1})
        self.phase2.add_param_group(group)

    # -- switching ----------------------------------------------------------------------------
    def set_curvature_closure(self, fn: LossClosure | None) -> None:
        """Closure ``() -> loss`` (with graph, full training batch) used by ``lr='auto'``."""
        self._curvature_closure = fn

    def observe(  # type: ignore[override]
        self, step: int | None = None, closure: LossClosure | None = None, **metrics: Any
    ) -> list[Event]:
        """Feed one evaluation's metrics; return the events (see ``groktimizer.wrapper``).

        Phase 1: the switch criterion sees the metrics (with the phase-2 weight decay as
        ``weight_decay`` unless given, for ``RhoSwitch``); when it fires, the switch happens and
        a ``switch`` event (with the ``auto_lr`` record, if any) is returned. Phase 2: the
        metrics go down to the phase-2 optimizer. ``step`` defaults to the number of steps taken.
        """
        step = self.num_steps if step is None else int(step)
        if self._phase == 2:
            return observe(self.phase2, step, closure=closure, **metrics) + self._drain()
        events = observe(self.phase1, step, closure=closure, **metrics)
        wd = self.phase2.defaults.get("weight_decay")
        if wd:
            metrics.setdefault("weight_decay", wd)
        if self.criterion.observe(step, **metrics):
            self.switch(closure=closure, step=step)
        return events + self._drain()

    def switch(self, closure: LossClosure | None = None, step: int | None = None) -> None:
        """Enter phase 2: resolve ``lr='auto'``; carry Adam's metric over if phase 2 takes it."""
        if self._phase == 2:
            raise RuntimeError(
                f"GROKtimizer: already in phase 2 (switched at step {self.switch_step})"
            )
        if self.lr_auto:
            self._resolve_auto_lr(closure or self._curvature_closure)
        if hasattr(self.phase2, "init_from_adam"):
            self.metric_carried = self.phase2.init_from_adam(self.phase1)
        self._phase = 2
        self.switch_step = self.num_steps if step is None else int(step)
        info = {"auto_lr": dict(self.auto_lr_record)} if self.auto_lr_record else {}
        self._emit("switch", self.switch_step, metric_carried=self.metric_carried, **info)

    def _resolve_auto_lr(self, closure: LossClosure | None) -> None:
        if closure is None:
            raise ValueError(
                "GROKtimizer: lr='auto' needs a curvature closure at the switch; pass closure= to "
                "switch()/observe() or call set_curvature_closure(fn)"
            )
        params = [p for g in self.phase2.param_groups for p in g["params"] if p.requires_grad]
        h_max, iters = top_eigenvalue(
            closure, params, iters=self.lr_auto_iters, tol=self.lr_auto_tol
        )
        wd = float(self.phase2.defaults.get("weight_decay", 0.0))
        lr = auto_lr(h_max, wd, self.lr_auto_safety)
        if not math.isfinite(lr):
            raise ValueError(f"GROKtimizer: auto lr is not finite (h_max={h_max!r})")
        for g in self.phase2.param_groups:
            g["lr"] = lr
            if hasattr(self.phase2, "group_momentum"):
                g["momentum_used"] = self.phase2.group_momentum(g)
        self.auto_lr_record = {
            "h_max": h_max,
            "lr": lr,
            "safety": self.lr_auto_safety,
            "weight_decay": wd,
            "iters": iters,
        }

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {
            "phase": self.phase,
            "switch_step": self.switch_step,
            "num_steps": self.num_steps,
            "phase1": self.phase1.state_dict(),
            "phase2": self.phase2.state_dict(),
            "criterion": self.criterion.state_dict(),
            "auto_lr_record": self.auto_lr_record,
            "metric_carried": self.metric_carried,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self.phase1.load_state_dict(state_dict["phase1"])
        self.phase2.load_state_dict(state_dict["phase2"])
        self.criterion.load_state_dict(state_dict["criterion"])
        self._phase = int(state_dict["phase"])
        self.switch_step = state_dict["switch_step"]
        self.num_steps = int(state_dict["num_steps"])
        self.auto_lr_record = state_dict.get("auto_lr_record")
        self.metric_carried = int(state_dict.get("metric_carried", 0))

    def __repr__(self) -> str:
        return (
            f"GROKtimizer(phase={self.phase}, switch_step={self.switch_step}, "
            f"criterion={self.criterion!r},\n  phase1={self.phase1!r},\n  phase2={self.phase2!r})"
        )
