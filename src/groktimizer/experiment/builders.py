"""Optimizers, phase schedules and gradient filters from the (validated) config.

The library classes take plain Python arguments; this module is the only place that maps config
fields onto them, so the library never sees Hydra.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from groktimizer.adam_cdm import AdamCDM
from groktimizer.biphasic import GROKtimizer
from groktimizer.cdm import CDM
from groktimizer.filters import GradFilterEMA, GradFilterMA
from groktimizer.guard import Guard
from groktimizer.param_groups import split_decay_groups
from groktimizer.switch import AccuracySwitch, LossSwitch, RhoSwitch, StepSwitch


def param_groups(model: nn.Module, weight_decay: float, no_decay: list[str]) -> list[dict]:
    if not no_decay:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    return split_decay_groups(model, weight_decay, exclude=tuple(no_decay))


def optimizer_factory(o: Any) -> Any:
    """A callable params -> optimizer for config node `o` (optimizer group)."""
    betas = tuple(o.betas)
    if o.name == "cdm":
        return functools.partial(
            CDM,
            lr=o.lr,
            weight_decay=o.weight_decay,
            damping=o.damping,
            nesterov=o.nesterov,
            momentum=o.momentum,
        )
    if o.name == "adam_cdm":
        return functools.partial(
            AdamCDM,
            lr=o.lr,
            weight_decay=o.weight_decay,
            damping=o.damping,
            beta2=betas[1],
            eps=o.eps,
            v_floor=o.v_floor,
            freeze_v=o.freeze_v,
        )
    if o.name == "sgd":
        return functools.partial(
            torch.optim.SGD, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum or 0.0
        )
    if o.name == "adam":
        return functools.partial(
            torch.optim.Adam, lr=o.lr, weight_decay=o.weight_decay, betas=betas, eps=o.eps
        )
    if o.name == "adamw":
        return functools.partial(
            torch.optim.AdamW, lr=o.lr, weight_decay=o.weight_decay, betas=betas, eps=o.eps
        )
    raise ValueError(f"optimizer.name={o.name!r}: accepted cdm, adam_cdm, sgd, adam, adamw")


def phase1_factory(p: Any) -> Any:
    betas = tuple(p.betas)
    if p.name == "adamw":
        return functools.partial(
            torch.optim.AdamW, lr=p.lr, weight_decay=p.weight_decay, betas=betas, eps=p.eps
        )
    if p.name == "adam":
        return functools.partial(
            torch.optim.Adam, lr=p.lr, weight_decay=p.weight_decay, betas=betas, eps=p.eps
        )
    if p.name == "sgd":
        return functools.partial(
            torch.optim.SGD, lr=p.lr, weight_decay=p.weight_decay, momentum=p.momentum
        )
    raise ValueError(f"schedule.phase1.name={p.name!r}: accepted adamw, adam, sgd")


def build_switch(sw: Any, weight_decay: float) -> Any:
    if sw.criterion == "accuracy":
        return AccuracySwitch(threshold=sw.threshold, patience=sw.patience)
    if sw.criterion == "loss":
        return LossSwitch(threshold=sw.threshold, patience=sw.patience)
    if sw.criterion == "step":
        return StepSwitch(step=sw.step)
    if sw.criterion == "rho":
        return RhoSwitch(threshold=sw.threshold, patience=sw.patience, weight_decay=weight_decay)
    raise ValueError(
        f"schedule.switch.criterion={sw.criterion!r}: accepted accuracy, loss, step, rho"
    )


def build_optimizer(o: Any, schedule: Any, model: nn.Module) -> Any:
    """The single-phase optimizer, or GROKtimizer(phase1 -> `o`) for schedule.kind=biphasic;
    wrapped in a Guard (active in phase 2 only) when optimizer.guard.enabled."""
    opt = _build_unguarded(o, schedule, model)
    g = o.get("guard") if hasattr(o, "get") else getattr(o, "guard", None)
    if g is None or not g.enabled:
        return opt
    return Guard(
        opt,
        rollback_ratio=g.rollback_ratio,
        loss_floor=g.loss_floor,
        lr_factor=g.lr_factor,
        restart_rise=g.restart_rise,
        restart_on_alignment=g.restart_on_alignment,
    )


def _build_unguarded(o: Any, schedule: Any, model: nn.Module) -> Any:
    groups = param_groups(model, o.weight_decay, list(o.no_decay))
    if schedule.kind == "single":
        return optimizer_factory(o)(groups)
    auto = isinstance(o.lr, str)
    # with lr="auto" phase 2 is built with a placeholder step that the switch replaces
    phase2 = optimizer_factory(_with_lr(o, 1.0) if auto else o)
    return GROKtimizer(
        groups,
        phase1=phase1_factory(schedule.phase1),
        phase2=phase2,
        lr="auto" if auto else None,
        switch=build_switch(schedule.switch, o.weight_decay),
        lr_auto_safety=o.lr_auto_safety,
    )


def _with_lr(o: Any, lr: float) -> Any:
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(o) if OmegaConf.is_config(o) else dict(o)
    node["lr"] = lr
    return OmegaConf.create(node)


def build_filter(g: Any) -> Any:
    if g.kind == "none":
        return None
    if g.kind == "ema":
        return GradFilterEMA(alpha=g.alpha, lamb=g.lamb)
    if g.kind == "ma":
        return GradFilterMA(window=g.window, lamb=g.lamb, warmup=g.warmup)
    raise ValueError(f"grad_filter.kind={g.kind!r}: accepted none, ema, ma")
