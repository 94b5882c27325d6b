"""Criteria that decide when GROKtimizer leaves phase 1 (reach interpolation) for phase 2.

Every criterion has ``observe(step, **metrics) -> bool``: it takes the metrics of one evaluation
and returns whether it is satisfied now. Metrics a criterion does not use are ignored; an
observation that lacks the metric a criterion needs neither counts towards nor breaks its
patience (the trainer may report train accuracy only at evaluation steps). ``reset()``,
``state_dict()`` and ``load_state_dict()`` make criteria resumable.

- ``AccuracySwitch``: ``metrics[metric] ≥ threshold`` for ``patience`` consecutive observations
  (or, with ``hold``, at consecutive observations spanning ``hold`` steps: see ``_Held``).
- ``LossSwitch``: ``metrics[metric] ≤ threshold`` likewise.
- ``StepSwitch``: ``step ≥ at_step``.
- ``RhoSwitch``: ``ρ = ‖∇L‖ / (λ‖w‖) < threshold`` for ``patience`` consecutive observations;
  at ρ ≈ 1 the loss gradient no longer dominates the decay pull, i.e. the fit is done.
- ``AnySwitch`` / ``AllSwitch``: compositions (every child sees every observation).
- ``NeverSwitch``: phase 1 forever (single-phase baselines through the same code path).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "SwitchCriterion",
    "AccuracySwitch",
    "LossSwitch",
    "StepSwitch",
    "RhoSwitch",
    "AnySwitch",
    "AllSwitch",
    "NeverSwitch",
    "make_switch",
]


def _check_count(owner: str, name: str, value: Any, optional: bool = False) -> None:
    """An int >= 1 (or None where ``optional``): patience, stall and hold."""
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        accepted = "None or an int >= 1" if optional else "an int >= 1"
        raise ValueError(f"{owner}: {name} must be {accepted}, got {value!r}")


def _check_real(owner: str, name: str, value: Any, lo: float, hi: float, rng: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{owner}: {name} must be {rng}, got {value!r}")


def check_fraction(owner: str, name: str, value: Any) -> float:
    """``value`` as a float in [0, 1] (NaN passes); else a ValueError naming it. An accuracy
    given in percent (43.8 for 43.8%) read as a fraction passed a 99% threshold at once: the
    default switched at step 30 of a 6-64-4 MLP at 43.8% train accuracy."""
    v = float(value)
    if not (math.isnan(v) or 0.0 <= v <= 1.0):
        hint = " (a percentage? give the fraction)" if 1.0 < v <= 100.0 else ""
        raise ValueError(f"{owner}: {name} must be a fraction in [0, 1], got {value!r}{hint}")
    return v


class SwitchCriterion:
    """Base class: subclasses implement ``_satisfied(step, metrics) -> bool | None``.

    ``None`` means "this observation lacks my metric": the previous state is kept.
    """

    def __init__(self) -> None:
        self.satisfied = False
        self.fired_step: int | None = None

    def _satisfied(self, step: int, metrics: dict[str, Any]) -> bool | None:
        raise NotImplementedError

    def observe(self, step: int, **metrics: Any) -> bool:
        """Feed one observation; return whether the criterion is satisfied now."""
        result = self._satisfied(int(step), metrics)
        if result is not None:
            self.satisfied = bool(result)
        if self.satisfied and self.fired_step is None:
            self.fired_step = int(step)
        return self.satisfied

    def waits_for(self, seen: set[str]) -> list[str]:
        """The metrics this criterion cannot fire without, of which none is in ``seen`` (the
        names ``observe`` has been given so far): [] when it can fire on what it gets."""
        return []

    def reset(self) -> None:
        self.satisfied = False
        self.fired_step = None

    def state_dict(self) -> dict[str, Any]:
        return {"satisfied": self.satisfied, "fired_step": self.fired_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.satisfied = bool(state["satisfied"])
        self.fired_step = state["fired_step"]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"

    def _config(self) -> dict[str, Any]:
        return {}


class _Held(SwitchCriterion):
    """A per-observation condition that must hold ``patience`` consecutive times, or, with
    ``hold`` (steps), at two or more consecutive observations ``hold`` steps apart or more.

    ``patience`` counts observations, so what it asks depends on how often a loop evaluates:
    the default's 3 span 20 steps at the Trainer's eval_every=10 and 200 at every 100 (a+b mod
    97, MLP, eval every 100: the switch at step 300 instead of 100, 99% validation at 600
    instead of 440). ``hold=20`` keeps the default's span for sparse evaluations (there two
    observations 100 steps apart hold longer than three 10 apart) and changes nothing where a
    loop evaluates every 10 steps or more often."""

    def __init__(self, patience: int, hold: int | None = None) -> None:
        super().__init__()
        _check_count(type(self).__name__, "patience", patience)
        _check_count(type(self).__name__, "hold", hold, optional=True)
        self.patience = patience
        self.hold = hold
        self.count = 0
        self.since: int | None = None  # step of the first observation of the current run

    def _condition(self, step: int, metrics: dict[str, Any]) -> bool | None:
        raise NotImplementedError

    def _satisfied(self, step: int, metrics: dict[str, Any]) -> bool | None:
        ok = self._condition(step, metrics)
        if ok is None:
            return None
        if not ok:
            self.count, self.since = 0, None
            return False
        self.count += 1
        if self.count == 1:
            self.since = int(step)
        spans = self.hold is not None and self.count >= 2 and int(step) - self.since >= self.hold  # type: ignore[operator]
        return self.count >= self.patience or spans

    def reset(self) -> None:
        super().reset()
        self.count, self.since = 0, None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "count": self.count, "since": self.since}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.count = int(state["count"])
        self.since = state.get("since")


def _one_metric(criterion: SwitchCriterion, seen: set[str]) -> list[str]:
    metric = criterion.metric  # type: ignore[attr-defined]
    return [] if metric in seen else [metric]


class AccuracySwitch(_Held):
    """Satisfied once ``metrics[metric] ≥ threshold`` held ``patience`` consecutive times, or,
    with ``stall``, once the metric has stopped improving short of it: no new best for ``stall``
    steps with the best at least ``stall_floor`` (a phase 1 that cannot reach the threshold: an
    MSE loss on a+b mod 97 levelled off at 99.2% train accuracy and never switched)."""

    def __init__(
        self,
        threshold: float = 0.999,
        patience: int = 1,
        metric: str = "train_acc",
        stall: int | None = None,
        stall_floor: float = 0.95,
        hold: int | None = None,
    ) -> None:
        _check_real("AccuracySwitch", "threshold", threshold, 0.0, 1.0, "in (0, 1]")
        if threshold == 0:  # 0 would switch at the first observation, before any fit
            raise ValueError(f"AccuracySwitch: threshold must be in (0, 1], got {threshold!r}")
        if stall is not None:
            _check_count("AccuracySwitch", "stall", stall)
        _check_real("AccuracySwitch", "stall_floor", stall_floor, 0.0, 1.0, "in (0, 1]")
        super().__init__(patience, hold)
        self.threshold = float(threshold)
        self.metric = metric
        self.stall = stall
        self.stall_floor = float(stall_floor)
        self.best: float | None = None
        self.best_step = 0
        self.stalled = False

    waits_for = _one_metric

    def _condition(self, step: int, metrics: dict[str, Any]) -> bool | None:
        if metrics.get(self.metric) is None:
            return None
        value = check_fraction("AccuracySwitch", self.metric, metrics[self.metric])
        if self.best is None or value > self.best:
            self.best, self.best_step = value, int(step)
        return value >= self.threshold

    def _satisfied(self, step: int, metrics: dict[str, Any]) -> bool | None:
        held = super()._satisfied(step, metrics)
        if held is None or held or self.stall is None:
            return held
        floor_ok = self.best is not None and self.best >= self.stall_floor
        self.stalled = floor_ok and step - self.best_step >= self.stall
        return self.stalled

    def reset(self) -> None:
        super().reset()
        self.best, self.best_step, self.stalled = None, 0, False

    def state_dict(self) -> dict[str, Any]:
        extra = {"best": self.best, "best_step": self.best_step, "stalled": self.stalled}
        return {**super().state_dict(), **extra}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.best = state.get("best")
        self.best_step = int(state.get("best_step", 0))
        self.stalled = bool(state.get("stalled", False))

    def _config(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "patience": self.patience,
            "metric": self.metric,
            "stall": self.stall,
            "stall_floor": self.stall_floor,
            "hold": self.hold,
        }


class LossSwitch(_Held):
    """Satisfied once ``metrics[metric] ≤ threshold`` held ``patience`` consecutive times.

    With cross-entropy a small loss can come from scaled-up logits alone; prefer accuracy.
    """

    def __init__(
        self,
        threshold: float,
        patience: int = 1,
        metric: str = "train_loss",
        hold: int | None = None,
    ) -> None:
        _check_real("LossSwitch", "threshold", threshold, 0.0, math.inf, "a float >= 0")
        super().__init__(patience, hold)
        self.threshold = float(threshold)
        self.metric = metric

    waits_for = _one_metric

    def _condition(self, step: int, metrics: dict[str, Any]) -> bool | None:
        if metrics.get(self.metric) is None:
            return None
        return float(metrics[self.metric]) <= self.threshold

    def _config(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "patience": self.patience,
            "metric": self.metric,
            "hold": self.hold,
        }


class StepSwitch(SwitchCriterion):
    """Satisfied from step ``at_step`` on."""

    def __init__(self, step: int) -> None:
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"StepSwitch: step must be an int >= 0, got {step!r}")
        super().__init__()
        self.at_step = step

    def _satisfied(self, step: int, metrics: dict[str, Any]) -> bool | None:
        return step >= self.at_step

    def _config(self) -> dict[str, Any]:
        return {"step": self.at_step}


class RhoSwitch(_Held):
    """Satisfied once ``ρ = ‖∇L‖/(λ‖w‖) < threshold`` held ``patience`` consecutive times.

    ``observe`` takes ``rho`` directly, or ``grad_norm`` and ``weight_norm`` (and
    ``weight_decay`` unless given here; GROKtimizer passes its phase-2 λ).
    """

    def __init__(
        self,
        threshold: float = 1.0,
        patience: int = 1,
        weight_decay: float | None = None,
        hold: int | None = None,
    ) -> None:
        _check_real("RhoSwitch", "threshold", threshold, 0.0, math.inf, "a float > 0")
        if threshold == 0:
            raise ValueError(f"RhoSwitch: threshold must be a float > 0, got {threshold!r}")
        if weight_decay is not None:
            _check_real("RhoSwitch", "weight_decay", weight_decay, 0.0, math.inf, "a float > 0")
            if weight_decay == 0:
                raise ValueError("RhoSwitch: weight_decay must be a float > 0, got 0")
        super().__init__(patience, hold)
        self.threshold = float(threshold)
        self.weight_decay = weight_decay
        self.last_rho: float | None = None

    @staticmethod
    def rho(grad_norm: float, weight_norm: float, weight_decay: float) -> float:
        """ρ = ‖∇L‖ / (λ‖w‖); infinite when the weights are zero."""
        denom = weight_decay * weight_norm
        return math.inf if denom == 0 else float(grad_norm) / denom

    def waits_for(self, seen: set[str]) -> list[str]:
        if "rho" in seen or {"grad_norm", "weight_norm"} <= seen:
            return []
        return ["rho (or grad_norm and weight_norm)"]

    def _condition(self, step: int, metrics: dict[str, Any]) -> bool | None:
        if metrics.get("rho") is not None:
            rho = float(metrics["rho"])
        else:
            if metrics.get("grad_norm") is None or metrics.get("weight_norm") is None:
                return None
            wd = self.weight_decay if self.weight_decay is not None else metrics.get("weight_decay")
            if not wd:
                raise ValueError(
                    "RhoSwitch: needs weight_decay > 0 (give it to RhoSwitch or in observe())"
                )
            rho = self.rho(float(metrics["grad_norm"]), float(metrics["weight_norm"]), float(wd))
        self.last_rho = rho
        return rho < self.threshold

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_rho": self.last_rho}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.last_rho = state.get("last_rho")

    def _config(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "patience": self.patience,
            "weight_decay": self.weight_decay,
            "hold": self.hold,
        }


class NeverSwitch(SwitchCriterion):
    """Never satisfied."""

    def _satisfied(self, step: int, metrics: dict[str, Any]) -> bool | None:
        return False


class _Composite(SwitchCriterion):
    def __init__(self, *criteria: SwitchCriterion) -> None:
        name = type(self).__name__
        if not criteria:
            raise ValueError(f"{name}: criteria must be one or more SwitchCriterion, got none")
        for c in criteria:
            if not isinstance(c, SwitchCriterion):
                raise ValueError(f"{name}: criteria must be SwitchCriterion objects, got {c!r}")
        super().__init__()
        self.criteria = list(criteria)

    def _combine(self, states: list[bool]) -> bool:
        raise NotImplementedError

    def _satisfied(self, step: int, metrics: dict[str, Any]) -> bool | None:
        # Every child observes (no short-circuit) so patience counters stay correct.
        states = [c.observe(step, **metrics) for c in self.criteria]
        return self._combine(states)

    def reset(self) -> None:
        super().reset()
        for c in self.criteria:
            c.reset()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "criteria": [c.state_dict() for c in self.criteria]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for c, s in zip(self.criteria, state["criteria"], strict=True):
            c.load_state_dict(s)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.criteria))})"


class AnySwitch(_Composite):
    """Satisfied when any child is."""

    def waits_for(self, seen: set[str]) -> list[str]:
        waits = [c.waits_for(seen) for c in self.criteria]
        return [] if not all(waits) else sorted({m for w in waits for m in w})

    def _combine(self, states: list[bool]) -> bool:
        return any(states)


class AllSwitch(_Composite):
    """Satisfied when every child is (each child keeps its own last state)."""

    def waits_for(self, seen: set[str]) -> list[str]:
        return sorted({m for c in self.criteria for m in c.waits_for(seen)})

    def _combine(self, states: list[bool]) -> bool:
        return all(states)


_REGISTRY: dict[str, type[SwitchCriterion]] = {
    "accuracy": AccuracySwitch,
    "loss": LossSwitch,
    "step": StepSwitch,
    "rho": RhoSwitch,
    "never": NeverSwitch,
}


def make_switch(name: str, **kwargs: Any) -> SwitchCriterion:
    """Build a criterion by name: accuracy, loss, step, rho, never."""
    if name not in _REGISTRY:
        raise ValueError(f"make_switch: name must be one of {sorted(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name](**kwargs)
