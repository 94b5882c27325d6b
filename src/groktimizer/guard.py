"""Guard: adaptive restart and rollback around a phase-2 optimizer (CDM, AdamCDM, GROKtimizer).

Heavy ball with a step that is too large for the current curvature does not fail gracefully: the
loss grows geometrically and is NaN a few dozen steps later. The guard watches the training loss
at check points (the trainer's evaluations, or every ``check_every`` steps of ``step(closure)``)
and acts on what it sees::

    L non-finite, or L > rollback_ratio · max(L_best, loss_floor)
        -> roll back: weights and optimizer state := last good snapshot,
           momentum := 0, η := lr_factor · η (every group of the active optimizer)
    L > (1 + restart_rise) · L_prev                                      (restart_rise set)
        -> restart: momentum := 0
    L <= max(L_best, loss_floor)
        -> a good state: snapshot := (weights, optimizer state), L_best := min(L_best, L)

``L_best`` is the lowest loss checked since the guard armed, so a loss that grows a little at
every check (the geometric growth of an unstable heavy ball) still trips the rollback.

and, with ``restart_on_alignment``, before every step it resets the momentum when the last update
went uphill on the phase-2 objective, ``(g + λw)·Δw > 0`` (O'Donoghue and Candès' gradient
restart; ``Δw`` is the previous update, λ the group's weight decay). A non-finite gradient also
triggers a rollback at once in that mode.

Every action is an event (returned by ``observe``, see ``groktimizer.wrapper``: dicts with
``step``, ``event`` = ``guard_restart`` | ``guard_rollback`` and the numbers behind it; a rollback
carries ``weights_changed: True``); nothing is done silently. The snapshot lives in
memory and in ``state_dict()``, so a resumed run continues exactly.

Wrapped around a ``GROKtimizer`` the guard watches only in phase 2; it arms (takes its first
snapshot) on the first phase-2 step, with the last loss it was shown as ``L_ref``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .distributed import check_setting, mean_over_ranks
from .wrapper import Event, OptimizerWrapper, observe, phase_of

__all__ = ["Guard"]

_MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")


def _positive(owner: str, name: str, value: Any, upper: float | None = None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value <= 0 or (upper is not None and value >= upper):
        rng = f"in (0, {upper})" if upper is not None else "> 0"
        raise ValueError(f"{owner}: {name} must be a float {rng}, got {value!r}")


class Guard(OptimizerWrapper):
    """Adaptive-restart / rollback wrapper; see the module docstring for the rules.

    Args:
        optimizer: the optimizer to guard (CDM, AdamCDM, a GROKtimizer, any torch optimizer).
        rollback_ratio: a checked loss above ``rollback_ratio · max(L_ref, loss_floor)`` (or a
            non-finite one) rolls back to the last good snapshot. > 1.
        loss_floor: floor of the reference loss, so that a rise from 1e-4 to 1e-3 after
            interpolation is not mistaken for divergence. > 0.
        lr_factor: η is multiplied by this at each rollback, in (0, 1).
        restart_rise: reset the momentum when the checked loss rose by more than this fraction
            since the previous check (None: never on the loss).
        restart_on_alignment: reset the momentum before a step when ``(g + λw)·Δw > 0``.
        check_every: with ``step(closure)``, the closure's loss is checked every this many
            steps (the trainer instead calls ``guard_observe`` at its evaluations).
        distributed: average each checked loss over the ranks of ``torch.distributed``, so
            every rank of a data-parallel job rolls back and restarts alike (None: when it is
            initialised with 2+ processes; False: each rank on its own). Every rank must then
            check at the same steps (``groktimizer.distributed``).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        rollback_ratio: float = 10.0,
        loss_floor: float = 1e-2,
        lr_factor: float = 0.5,
        restart_rise: float | None = None,
        restart_on_alignment: bool = False,
        check_every: int = 1,
        distributed: bool | None = None,
    ) -> None:
        _positive("Guard", "rollback_ratio", rollback_ratio)
        check_setting("Guard", distributed)
        if rollback_ratio <= 1:
            raise ValueError(f"Guard: rollback_ratio must be a float > 1, got {rollback_ratio!r}")
        _positive("Guard", "loss_floor", loss_floor)
        _positive("Guard", "lr_factor", lr_factor, upper=1.0)
        if restart_rise is not None:
            _positive("Guard", "restart_rise", restart_rise)
        if not isinstance(check_every, int) or isinstance(check_every, bool) or check_every < 1:
            raise ValueError(f"Guard: check_every must be an int >= 1, got {check_every!r}")
        if not isinstance(optimizer, Optimizer):
            raise ValueError(f"Guard: optimizer must be a torch Optimizer, got {optimizer!r}")
        super().__init__()
        self.optimizer = optimizer
        self.rollback_ratio = float(rollback_ratio)
        self.loss_floor = float(loss_floor)
        self.lr_factor = float(lr_factor)
        self.restart_rise = None if restart_rise is None else float(restart_rise)
        self.restart_on_alignment = bool(restart_on_alignment)
        self.check_every = check_every
        self.distributed = distributed
        self.num_steps = 0
        self.armed = False
        self.last_loss: float | None = None  # loss at the previous check (phase 1 included)
        self.ref_loss: float | None = None  # L_best: the lowest loss checked since arming
        self.snapshot: dict[str, Any] | None = None
        self.prev_update: list[Tensor] | None = None
        self.counts = {"restarts": 0, "rollbacks": 0}

    def __getattr__(self, name: str) -> Any:
        # phase, switch_step, observe, auto_lr_record, init_from_adam ... of the wrapped optimizer
        if name == "optimizer" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    @property
    def current(self) -> Optimizer:
        return self.optimizer

    @property
    def watching(self) -> bool:
        """True in phase 2 of a GROKtimizer, always for a single-phase optimizer."""
        return phase_of(self.optimizer) in (None, 2)

    def _params(self) -> list[Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    # -- stepping -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step of the wrapped optimizer, with the alignment restart before it when on.

        With a ``closure`` its loss (at the weights before the step) is checked every
        ``check_every`` steps, as ``guard_observe`` would.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            if self.watching and self.armed and self.num_steps % self.check_every == 0:
                if self.guard_observe(self.num_steps, float(loss)):
                    with torch.enable_grad():  # the gradient of the restored weights
                        self.optimizer.zero_grad()
                        loss = closure()
            elif not self.watching or not self.armed:
                self.last_loss = float(loss)
        if self.watching and not self.armed:
            self._arm()
        if self.watching and self.restart_on_alignment:
            self._alignment_check()
        before = [p.detach().clone() for p in self._params()] if self._tracking else None
        self.optimizer.step()
        if before is not None:
            self.prev_update = [p.detach() - b for p, b in zip(self._params(), before, strict=True)]
        self.num_steps += 1
        return loss

    @property
    def _tracking(self) -> bool:
        return self.watching and self.restart_on_alignment

    def _alignment_check(self) -> None:
        if self.prev_update is None:
            return
        dot: Tensor | float = 0.0
        index = {id(p): i for i, p in enumerate(self._params())}
        for group in self.optimizer.param_groups:
            wd = float(group.get("weight_decay", 0.0) or 0.0)
            for p in group["params"]:
                if p.grad is None:
                    continue
                i = index[id(p)]
                d = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                dot = dot + (d.double() * self.prev_update[i].double()).sum()
        value = float(dot)  # one host sync per step
        if not math.isfinite(value):
            self._rollback(self.num_steps, value, reason="non-finite gradient")
            for p in self._params():  # the gradient belongs to the discarded weights
                p.grad = None
        elif value > 0:
            self._reset_momentum()
            self.counts["restarts"] += 1
            self._record("guard_restart", self.num_steps, reason="alignment", g_dot_dw=value)

    # -- checks -------------------------------------------------------------------------------
    def observe(self, step: int, **metrics: Any) -> list[Event]:
        """The wrapped optimizer observes first; then ``train_loss`` (if given) is checked.

        When an inner event already changed the weights, the loss passed in describes weights
        that are gone, so it is not checked.
        """
        events = observe(self.optimizer, step, **metrics)
        loss = metrics.get("train_loss")
        if loss is not None and not any(e.get("weights_changed") for e in events):
            self.guard_observe(step, float(loss))
        return events + self._drain()

    @torch.no_grad()
    def guard_observe(self, step: int, train_loss: float) -> bool:
        """Check ``train_loss`` (at the current weights). True iff the weights were rolled back.

        Its events come out of the next ``observe`` (or ``pop_events``).
        """
        loss = float(train_loss)
        mean = mean_over_ranks("Guard", self.distributed)
        if mean is not None:  # every rank checks here at the same steps: the mean over shards
            loss = float(mean.tensors([torch.tensor(loss, dtype=torch.float64)])[0])
        if not self.watching or not self.armed:
            self.last_loss = loss
            return False
        if self.ref_loss is None and math.isfinite(loss):  # armed before any loss was seen
            self.last_loss = loss
            self._take_snapshot(step, loss)
            return False
        bound = max(self.ref_loss if self.ref_loss is not None else 0.0, self.loss_floor)
        if not math.isfinite(loss) or loss > self.rollback_ratio * bound:
            self._rollback(step, loss, reason="loss rise")
            return True
        prev = self.last_loss
        self.last_loss = loss
        rise = self.restart_rise
        if rise is not None and prev is not None and loss > (1 + rise) * prev:
            self._reset_momentum()
            self.counts["restarts"] += 1
            self._record("guard_restart", step, reason="loss rise", loss=loss, prev_loss=prev)
        elif loss <= bound:
            # a good state: no worse than the best loss so far (or under the floor). A loss that
            # creeps up step by step is not a good state, so it cannot ratchet the bound up.
            self._take_snapshot(step, min(loss, bound if self.ref_loss is None else self.ref_loss))
        return False

    def _arm(self) -> None:
        self.armed = True
        self._take_snapshot(self.num_steps, self.last_loss)

    def _take_snapshot(self, step: int, loss: float | None) -> None:
        self.snapshot = {
            "step": int(step),
            "params": [p.detach().clone() for p in self._params()],
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }
        self.ref_loss = loss

    def _rollback(self, step: int, loss: float, reason: str) -> None:
        assert self.snapshot is not None
        lrs = [float(g["lr"]) * self.lr_factor for g in self.optimizer.param_groups]
        for p, s in zip(self._params(), self.snapshot["params"], strict=True):
            p.copy_(s)
        self.optimizer.load_state_dict(copy.deepcopy(self.snapshot["optimizer"]))
        for g, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            g["lr"] = lr
            if hasattr(self.optimizer, "group_momentum"):
                g["momentum_used"] = self.optimizer.group_momentum(g)
        self._reset_momentum()
        restored = self.snapshot["step"]
        self._take_snapshot(restored, self.ref_loss)  # the same weights, at the lowered η
        self.prev_update = None
        self.last_loss = self.ref_loss
        self.counts["rollbacks"] += 1
        self._record(
            "guard_rollback",
            step,
            weights_changed=True,
            reason=reason,
            loss=loss,
            ref_loss=self.ref_loss,
            restored_step=restored,
            lr=lrs[0],
        )

    def _reset_momentum(self) -> None:
        # a GROKtimizer's `state` is that of its active phase
        for st in self.optimizer.state.values():
            for key in _MOMENTUM_KEYS:
                buf = st.get(key)
                if isinstance(buf, Tensor):
                    if key == "momentum_buffer":
                        del st[key]  # CDM / AdamCDM / SGD restart the buffer from d
                    else:
                        buf.zero_()

    def _record(self, event: str, step: int, weights_changed: bool = False, **info: Any) -> None:
        self._emit(event, step, weights_changed=weights_changed, **info, **self.counts)

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {
            "optimizer": self.optimizer.state_dict(),
            "guard": {
                "num_steps": self.num_steps,
                "armed": self.armed,
                "last_loss": self.last_loss,
                "ref_loss": self.ref_loss,
                "snapshot": copy.deepcopy(self.snapshot),
                "prev_update": None
                if self.prev_update is None
                else [t.clone() for t in self.prev_update],
                "counts": dict(self.counts),
                "events": list(self._pending_events),
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self.optimizer.load_state_dict(state_dict["optimizer"])
        g = state_dict["guard"]
        self.num_steps = int(g["num_steps"])
        self.armed = bool(g["armed"])
        self.last_loss = g["last_loss"]
        self.ref_loss = g["ref_loss"]
        self.snapshot = copy.deepcopy(g["snapshot"])
        params = self._params()
        if self.snapshot is not None:  # onto this model's device
            self.snapshot["params"] = [
                s.to(p.device) for s, p in zip(self.snapshot["params"], params, strict=True)
            ]
        self.prev_update = (
            None
            if g["prev_update"] is None
            else [t.to(p.device) for t, p in zip(g["prev_update"], params, strict=True)]
        )
        self.counts = dict(g["counts"])
        self._pending_events = list(g["events"])

    def __repr__(self) -> str:
        return (
            f"Guard(rollback_ratio={self.rollback_ratio}, loss_floor={self.loss_floor}, "
            f"lr_factor={self.lr_factor}, restart_rise={self.restart_rise}, "
            f"restart_on_alignment={self.restart_on_alignment},\n  {self.optimizer!r})"
        )
