"""The protocol of optimizers that wrap other optimizers (GROKtimizer, Guard, FilteredOptimizer).

A training loop talks to any optimizer through two functions and never probes attributes:

- ``phase_of(opt)``: 1 or 2 for a biphasic optimizer (through any chain of wrappers), ``None``
  for a single-phase one (a plain torch optimizer, CDM, a Guard around AdamCDM ...).
- ``observe(opt, step, **metrics) -> list[dict]``: hand the optimizer the metrics of one
  evaluation; it returns what it did. Metrics a loop passes: ``train_acc``, ``train_loss``,
  ``grad_norm``, ``weight_norm`` and ``closure`` (a zero-argument callable returning the
  full-batch training loss with graph, for curvature probes; may be None). Each event is a dict
  with at least ``step`` and ``event`` (``switch``, ``guard_rollback``, ``guard_restart``,
  ``auto_lr``, ``decay_backoff`` ...); an event that changed the weights carries
  ``weights_changed: True`` (the loop should recompute any metric it reports for this step).
  A plain torch optimizer returns ``[]``.

``OptimizerWrapper`` is the one place that sets up the bookkeeping ``Optimizer.__init__`` would
(step / state-dict hooks) for a class whose ``param_groups``, ``state`` and ``defaults`` are
views of the inner optimizer that currently takes steps (``current``). LR schedulers, gradient
clipping and ``opt.param_groups[0]['lr']`` therefore see the optimizer that actually steps.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch.optim import Optimizer

__all__ = ["OptimizerWrapper", "phase_of", "observe"]

Event = dict[str, Any]


class OptimizerWrapper(Optimizer):
    """Base of optimizers that delegate to an inner optimizer (``current``).

    Subclasses call ``super().__init__()`` (which does not call ``Optimizer.__init__``: there are
    no groups of its own) and implement ``current``. Events a wrapper produces between
    observations (e.g. at a step) go through ``_emit`` and come out of the next ``observe``.
    """

    def __init__(self) -> None:
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        self._pending_events: list[Event] = []

    # Optimizer's own pickling stores param_groups/state as attributes; these are views here.
    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_pending_events", [])

    @property
    def current(self) -> Optimizer:
        """The inner optimizer that takes the steps now."""
        raise NotImplementedError

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.current.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.current.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.current.defaults

    @property
    def phase(self) -> int | None:
        """1 or 2 for a biphasic optimizer down the chain, None for a single-phase one."""
        return phase_of(self.current)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.current.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.current.add_param_group(param_group)

    def observe(self, step: int, **metrics: Any) -> list[Event]:
        """Pass the metrics down the chain; return the events of the chain, inner ones first."""
        return observe(self.current, step, **metrics) + self._drain()

    def _emit(self, event: str, step: int, weights_changed: bool = False, **info: Any) -> Event:
        ev: Event = {"step": int(step), "event": event, **info}
        if weights_changed:
            ev["weights_changed"] = True
        self._pending_events.append(ev)
        return ev

    def _drain(self) -> list[Event]:
        out, self._pending_events = self._pending_events, []
        return out

    def pop_events(self) -> list[Event]:
        """Events emitted outside ``observe`` (at steps) since the last call, inner ones first."""
        inner = self.current
        out = inner.pop_events() if isinstance(inner, OptimizerWrapper) else []
        return out + self._drain()


def phase_of(opt: Optimizer) -> int | None:
    """1 or 2 for a biphasic optimizer (also when wrapped), None for a single-phase optimizer."""
    return opt.phase if isinstance(opt, OptimizerWrapper) else None


def observe(opt: Optimizer, step: int, **metrics: Any) -> list[Event]:
    """Give ``opt`` the metrics of one evaluation; the events it produced (``[]`` for torch's)."""
    return opt.observe(int(step), **metrics) if isinstance(opt, OptimizerWrapper) else []
