"""Objects from the config: every optimizer, schedule, filter and guard comes from its `_target_`.

A config node names a class (``_target_``) and its arguments; ``hydra.utils.instantiate`` builds
it, and the class validates its own arguments. The only wiring done here is what no single node
can say: the parameter groups, the phase-2 optimizer handed to a biphasic schedule, and the guard
wrapped around the result.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from groktimizer.biphasic import AUTO_PLACEHOLDER
from groktimizer.param_groups import split_decay_groups


class BuildError(ValueError):
    """A config node could not be built (one line naming the node and the constructor's reason)."""


def instantiate_node(node: Any, path: str) -> Any:
    """``instantiate(node)``, or None when its ``_target_`` is null; errors name the node."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if node is None or not node.get("_target_"):
        return None
    try:
        return instantiate(node)
    except InstantiationException as err:
        raise BuildError(f"{path}: {_reason(err)}") from err


def call_node(factory: Any, path: str, *args: Any, **kwargs: Any) -> Any:
    """Call a partial built from `path`; a constructor's ValueError/TypeError names the node."""
    try:
        return factory(*args, **kwargs)
    except (ValueError, TypeError) as err:
        raise BuildError(f"{path} ({_name(factory)}): {_reason(err)}") from err


def _name(factory: Any) -> str:
    func = getattr(factory, "func", factory)
    return getattr(func, "__qualname__", repr(func))


def _reason(err: BaseException) -> str:
    while err.__cause__ is not None and not isinstance(err, (ValueError, TypeError)):
        err = err.__cause__
    cause = err.__cause__ if err.__cause__ is not None else err
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    return " ".join(lines) or type(cause).__name__


def param_groups(model: nn.Module, weight_decay: float, no_decay: list[str]) -> list[dict]:
    if not no_decay:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    return split_decay_groups(model, weight_decay, exclude=tuple(no_decay))


AUTO_KEYS = tuple(AUTO_PLACEHOLDER)  # phase-2 values a biphasic schedule may measure ("auto")


def build_optimizer(cfg: Any, model: nn.Module) -> Any:
    """`cfg.optimizer` alone (schedule ``_target_: null``) or as phase 2 of `cfg.schedule`,
    wrapped in `cfg.guard` when that names a class.

    ``optimizer.lr: auto`` / ``optimizer.weight_decay: auto`` are handed to the schedule
    (``GROKtimizer(lr="auto", weight_decay="auto")``), which measures them at the switch.
    """
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg.optimizer, resolve=True)
    auto = {k: "auto" for k in AUTO_KEYS if node.get(k) == "auto"}
    for k in auto:
        del node[k]
    make = instantiate_node(OmegaConf.create(node), "optimizer")
    # an 'auto' value stands in as its placeholder until the switch measures it; the decayed
    # group must carry λ > 0 then, or the measured λ would never reach it
    stand_in = {k: AUTO_PLACEHOLDER[k] for k in auto}
    wd = stand_in.get("weight_decay", node.get("weight_decay", 0.0))
    groups = param_groups(model, float(wd), list(cfg.no_decay))
    # built once even as phase 2, so a bad argument is reported against `optimizer` up front
    opt = call_node(make, "optimizer", groups, **stand_in)
    schedule = instantiate_node(cfg.schedule, "schedule")
    if schedule is not None:
        opt = call_node(schedule, "schedule", groups, phase2=make, **auto)
    guard = instantiate_node(cfg.guard, "guard")
    return opt if guard is None else call_node(guard, "guard", opt)


def build_filter(cfg: Any) -> Any:
    """The gradient filter (Grokfast EMA / MA) or None."""
    return instantiate_node(cfg.grad_filter, "grad_filter")
