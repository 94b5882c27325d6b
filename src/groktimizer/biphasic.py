"""GROKtimizer: phase 1 (reach interpolation fast) -> switch -> phase 2 (CDM with weight decay).

``GROKtimizer(model.parameters())`` needs no phase-2 argument: phase 1 is AdamW (wd 0), the
switch fires at 99.9% train accuracy, phase 2 is ``default_phase2``: critically damped heavy ball
in Adam's metric (carried over from phase 1) on the ℓ2-regularised gradient, ``AdamCDML2`` (its
fixed point is the ℓ2 one the theory describes; ``AdamCDM``, the gradient alone in Adam's metric,
stays available as ``phase2=AdamCDM``), whose step size η and weight decay λ are set and kept by
``groktimizer.autotune.Phase2Tuner``: η at a fraction of heavy ball's stability bound for the
measured curvature of the preconditioned loss, λ from the flat-mode rate κ = ηλ, rolled back and
lowered when decay beats the fit. Explicit values stay available (``lr=``, ``weight_decay=``, or
a ``phase2`` factory that sets them).

Both phase optimizers are built at construction over the same parameter groups, so a bad
argument fails at once. ``param_groups``, ``state`` and ``defaults`` are those of the active
phase, so gradient clipping and code that reads ``param_groups[i]['lr']`` see the optimizer
actually stepping. An LR scheduler belongs to one phase: build it on ``opt.phase1`` (a warm-up)
or on ``opt.phase2``; a scheduler built on ``opt`` in phase 1 and stepped after the switch would
overwrite phase 2's η.

Param groups given as dicts hold the phase-2 settings (e.g. ``{'params': biases,
'weight_decay': 0.0}``: a group with λ = 0 stays undecayed under the automatic λ); phase-1
settings for a group go in an optional nested ``'phase1'`` dict.

The loop hands the optimizer its metrics through ``observe`` (``groktimizer.wrapper``): train
accuracy and loss, weight norm, and a closure returning the full-batch training loss with graph
(the curvature probes need it at the switch and every ``reestimate_every`` steps of phase 2).
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .adam_cdm_l2 import AdamCDML2
from .autotune import Phase2Tuner
from .cdm import CDM, check_lr, check_weight_decay
from .distributed import MeanOverRanks, check_setting, mean_over_ranks
from .param_groups import parameter_norm
from .switch import AccuracySwitch, RhoSwitch, SwitchCriterion, check_fraction
from .wrapper import Event, OptimizerWrapper, observe

__all__ = ["GROKtimizer", "default_phase1", "default_phase2"]

OptimizerFactory = Callable[[Any], Optimizer]
LossClosure = Callable[[], Tensor]

default_phase1: OptimizerFactory = functools.partial(
    torch.optim.AdamW, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.98)
)

# The default phase 2: heavy ball on (g + λ'w)/D in Adam's metric (AdamCDML2), whose fixed point
# is the ℓ2 one, λ in AdamCDM's units (λ' = λ·s, s the median of D at the switch), D floored at
# 0.1·s. Over the robustness suite it grokked sparse parity where AdamCDM stayed at chance, and
# was faster on the MLP settings (README, outputs/results/cpu/robustness).
default_phase2: OptimizerFactory = functools.partial(
    AdamCDML2, metric_decay=True, scale_floor=0.1, scale_rule="first"
)

AUTO_PLACEHOLDER = {"lr": 1e-3, "weight_decay": 1.0}  # until the switch measures them
MISSING_METRIC_AFTER = 100  # observations without the switch's metric before a warning
PACE_AFTER = 50  # optimizer steps before observe()'s step is compared with them


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


def _sets(factory: Any, key: str) -> bool:
    """Whether a ``functools.partial`` factory already fixes ``key``."""
    return isinstance(factory, functools.partial) and key in factory.keywords


def _criteria(criterion: Any) -> list[Any]:
    """The criterion and, for AnySwitch / AllSwitch, every criterion inside it."""
    inner = getattr(criterion, "criteria", None) or []
    return [criterion, *(c for sub in inner for c in _criteria(sub))]


def _base(factory: Any) -> Any:
    while isinstance(factory, functools.partial):
        factory = factory.func
    return factory


def _family_keys(factory: Any) -> tuple[str, ...]:
    """The shared phase-2 arguments ``factory`` takes: damping and nesterov for the CDM family,
    damping for AdamCDML2, none for any other optimizer."""
    base = _base(factory)
    if isinstance(base, type) and issubclass(base, CDM):
        return ("damping", "nesterov")
    if isinstance(base, type) and issubclass(base, AdamCDML2):
        return ("damping",)
    return ()


class GROKtimizer(OptimizerWrapper):
    """Biphasic optimizer: ``phase1`` until the switch criterion fires, then ``phase2``.

    Args:
        params: parameters or param groups (group keys are phase-2 settings; ``'phase1'`` holds
            a dict of phase-1 settings for that group).
        phase1: ``params -> Optimizer`` (default: AdamW lr 1e-3, weight decay 0, betas
            (0.9, 0.98)). One without Adam's second moment (SGD) works too: phase 2's step cap
            then takes the default's Adam step, 1e-3 (see ``switch``).
        phase2: ``params -> Optimizer`` (default: ``default_phase2``, AdamCDML2 with
            ``damping``; ``AdamCDM`` and the paper's plain ``CDM`` also take ``nesterov``). A
            ``functools.partial`` may fix ``lr`` / ``weight_decay`` itself.
        lr: phase-2 η > 0, or ``'auto'`` (default unless ``phase2`` fixes it): measured at the
            switch and re-measured during phase 2.
        weight_decay: phase-2 λ ≥ 0, or ``'auto'`` (default unless ``phase2`` fixes it):
            ``flat_rate / η`` at the switch, lowered when decay wins.
        damping: ζ > 0 for the default phase 2.
        nesterov: Nesterov form of a CDM-family phase 2 (CDM, AdamCDM).
        switch: a ``SwitchCriterion`` (default: ``AccuracySwitch(0.99, patience=3,
            stall=1000, hold=20)``: 99% train accuracy at 3 observations running, or at 2 or
            more running that span 20 steps (a loop evaluating every 100 steps switches at its
            second, not its third), or no new best train accuracy for 1,000 steps above 95%; at
            99.9% a minibatch phase 1 hovering at 99.3-99.8% switched only by the stall rule,
            1,300 steps late).
        lr_fraction: f in (0, 2): η·(h + λ) = f·2(1 + β), the fraction of heavy ball's bound
            (None: 0.5 for raw CDM, 1.0 in Adam's metric, where v damps overshooting modes).
        flat_rate: κ = ηλ in (0, 1) for the automatic λ.
        reestimate_every: steps between curvature re-measurements in phase 2 (int ≥ 1).
        lr_auto_safety: legacy rule η = c/(h + λ), c in (0, 2) (None: the bound rule).
        lr_auto_iters: Lanczos iterations of the curvature probe at the switch (int ≥ 1).
        curvature_closure: ``() -> loss`` with graph on the full training batch, used when
            ``observe``/``switch`` get no ``closure``.
        tuner: a ``Phase2Tuner`` replacing the one built from the arguments above.
        distributed: average ``observe``'s metrics and the curvature probe over the ranks of
            ``torch.distributed`` so every rank of a data-parallel job decides alike (None: when
            it is initialised with 2+ processes; False: each rank on its own, for independent
            runs per rank; see ``groktimizer.distributed``).
    """

    def __init__(
        self,
        params: Any,
        phase1: OptimizerFactory | None = None,
        phase2: OptimizerFactory | None = None,
        lr: float | str | None = None,
        weight_decay: float | str | None = None,
        damping: float = 1.0,
        nesterov: bool = False,
        switch: SwitchCriterion | None = None,
        lr_fraction: float | None = None,
        flat_rate: float = 1e-3,
        reestimate_every: int = 50,
        lr_auto_safety: float | None = None,
        lr_auto_iters: int = 20,
        lr_auto_tol: float | None = None,
        curvature_closure: LossClosure | None = None,
        tuner: Phase2Tuner | None = None,
        phase2_scheduler: Callable[[Optimizer], Any] | None = None,
        distributed: bool | None = None,
    ) -> None:
        del lr_auto_tol  # kept for old configs; Lanczos runs a fixed number of iterations
        if switch is not None and not isinstance(switch, SwitchCriterion):
            raise ValueError(
                f"GROKtimizer: switch must be a SwitchCriterion or None, got {switch!r}"
            )
        if phase2_scheduler is not None and not callable(phase2_scheduler):
            raise ValueError(
                "GROKtimizer: phase2_scheduler must be a callable optimizer -> LR scheduler, "
                f"got {phase2_scheduler!r}"
            )
        self.phase2_scheduler_factory = phase2_scheduler
        self.phase2_scheduler: Any = None
        check_setting("GROKtimizer", distributed)
        self.distributed = distributed
        if isinstance(lr, str) and lr != "auto":
            raise ValueError(f"GROKtimizer: lr must be a float > 0 or 'auto', got {lr!r}")
        if isinstance(weight_decay, str) and weight_decay != "auto":
            raise ValueError(
                f"GROKtimizer: weight_decay must be a float >= 0 or 'auto', got {weight_decay!r}"
            )
        if lr is None:
            lr = None if _sets(phase2, "lr") else "auto"
        if weight_decay is None:
            weight_decay = None if _sets(phase2, "weight_decay") else "auto"
        if lr is not None and lr != "auto":
            check_lr("GROKtimizer", lr)
        if weight_decay is not None and weight_decay != "auto":
            check_weight_decay("GROKtimizer", weight_decay)
        self.lr_auto = lr == "auto"
        self.weight_decay_auto = weight_decay == "auto"

        kwargs: dict[str, Any] = {}
        for key, value in (("lr", lr), ("weight_decay", weight_decay)):
            if value == "auto":
                kwargs[key] = AUTO_PLACEHOLDER[key]
            elif value is not None:
                kwargs[key] = value
        if phase2 is None:
            phase2 = default_phase2
        # damping / nesterov belong to the CDM family's signature (AdamCDML2: damping only)
        for key, value in (("damping", damping), ("nesterov", nesterov)):
            if key in _family_keys(phase2) and not _sets(phase2, key):
                kwargs[key] = value
            elif key == "nesterov" and nesterov and not _sets(phase2, key):
                raise ValueError(
                    f"GROKtimizer: nesterov=True needs a phase 2 of the CDM family (CDM, "
                    f"AdamCDM), got {_base(phase2).__name__}"
                )

        if tuner is None:  # built even when unused: it validates its arguments
            tuner = Phase2Tuner(
                lr_auto=self.lr_auto,
                weight_decay_auto=self.weight_decay_auto,
                lr_fraction=lr_fraction,
                flat_rate=flat_rate,
                reestimate_every=reestimate_every,
                probe_iters=lr_auto_iters,
                lr_auto_safety=lr_auto_safety,
            )
            if not (self.lr_auto or self.weight_decay_auto):
                tuner = None
        elif not isinstance(tuner, Phase2Tuner):
            raise ValueError(f"GROKtimizer: tuner must be a Phase2Tuner or None, got {tuner!r}")
        self.tuner = tuner

        super().__init__()
        groups = _normalize_groups(params)
        p1_groups = [{"params": g["params"], **g.get("phase1", {})} for g in groups]
        p2_groups = [{k: v for k, v in g.items() if k != "phase1"} for g in groups]
        self.phase1: Optimizer = (phase1 or default_phase1)(p1_groups)
        self.phase2: Optimizer = phase2(p2_groups, **kwargs)

        self.criterion: SwitchCriterion = (
            switch if switch is not None else AccuracySwitch(0.99, patience=3, stall=1000, hold=20)
        )
        if self.weight_decay_auto and any(
            isinstance(c, RhoSwitch) and c.weight_decay is None for c in _criteria(self.criterion)
        ):
            raise ValueError(
                "GROKtimizer: RhoSwitch needs a weight_decay when phase 2's weight_decay is "
                "'auto' (measured only at the switch); give RhoSwitch(weight_decay=...) or a "
                "fixed weight_decay"
            )
        self._curvature_closure = curvature_closure
        self._switch_closure: LossClosure | None = None  # the one the switch measured with
        # the last closure observe() was given: used where a later observe() gets none
        self._last_closure: LossClosure | None = None
        self._phase = 1
        self.switch_step: int | None = None
        self.num_steps = 0
        self.auto_lr_record: dict[str, Any] | None = None
        self._seen_metrics: set[str] = set()  # names observe() has been given in phase 1
        self._phase1_observations = 0
        self._step_ref: tuple[int, int] | None = None  # (observe's step, steps taken) at first
        self._step_warned = False
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
        if self._phase == 2 and self.tuner is not None and self.tuner.noise_due:
            # phase 2's first step: its gradient against the full batch's, at the same weights
            closure_fb = self._switch_closure or self._curvature_closure
            self._pending_events += self.tuner.first_step(self.phase2, self.num_steps, closure_fb)
        loss = self.active.step(*args[1:], **kwargs)
        self.num_steps += 1
        if self.phase2_scheduler is not None and self._phase == 2:
            self.phase2_scheduler.step()
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
        a ``switch`` event (with the ``auto_lr`` record) is returned. Phase 2: the tuner checks
        the metrics (curvature re-measurements, decay / step back-offs), then they go down to
        the phase-2 optimizer. ``step`` defaults to the number of steps taken.
        """
        if step is not None:
            self._check_step_pace(int(step))
        step = self.num_steps if step is None else int(step)
        if metrics.get("train_acc") is not None:  # the switch and the tuner read it
            check_fraction("GROKtimizer", "train_acc", metrics["train_acc"])
        if closure is not None:
            self._last_closure = closure
        closure = self._closure(closure)
        mean = self._mean_over_ranks()
        if mean is not None:
            metrics = mean.metrics(metrics)
        if self._phase == 2:
            if self.tuner is not None:
                for ev in self.tuner.observe(self.phase2, step, self._normed(metrics), closure):
                    self._pending_events.append(ev)
            return self._drain() + observe(self.phase2, step, closure=closure, **metrics)
        if self.tuner is not None:
            self._check_closure(closure)
            self.tuner.observe_phase1(metrics)
        self._check_switch_metrics(metrics)
        events = observe(self.phase1, step, closure=closure, **metrics)
        wd = self.phase2.defaults.get("weight_decay")
        if wd and not self.weight_decay_auto:
            metrics.setdefault("weight_decay", wd)
        if self.criterion.observe(step, **metrics):
            self.switch(closure=closure, step=step, metrics=self._normed(metrics))
        return events + self._drain()

    def switch(
        self,
        closure: LossClosure | None = None,
        step: int | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        """Enter phase 2: carry Adam's metric over if phase 2 takes it, then set η and λ."""
        if self._phase == 2:
            raise RuntimeError(
                f"GROKtimizer: already in phase 2 (switched at step {self.switch_step})"
            )
        step = self.num_steps if step is None else int(step)
        closure = self._closure(closure)
        self._mean_over_ranks()
        lr1 = self.phase1.param_groups[0].get("lr")
        phase1_lr = float(lr1) if isinstance(lr1, (int, float)) else None
        info: dict[str, Any] = {}
        if hasattr(self.phase2, "init_from_adam"):
            self.metric_carried = self.phase2.init_from_adam(self.phase1)
            if self.metric_carried == 0 and self.phase1.state:
                # Phase 1 stepped without Adam's second moment (SGD, say): its lr is not an Adam
                # step, so the step cap takes the default phase 1's (phase 2 starts its second
                # moment from its first gradient, as Adam does). a+b mod 97, MLP, phase 1 SGD
                # with momentum 0.9, lr 0.1 / 0.03: 510 / 900 steps to 99%. With SGD's lr read
                # as Adam's step, η came out 100x / 30x too large (four blow-ups in a row / a
                # decay back-off and a blow-up): 850 / 1,210. With the metric started from the
                # closure's gradient at the switch instead, so that the probe saw it, the
                # curvature read 150,606 / 617,692 and η sat 7x / 30x under the cap: 710 / 1,540.
                phase1_lr = float(default_phase1.keywords["lr"])
                info["adam_step_assumed"] = phase1_lr
        # Phase 1 never steps again: its state (Adam's two moments, twice the weights' size; the
        # second moment was copied above) is freed, in memory and in checkpoints
        self.phase1.state.clear()
        if self.tuner is not None:
            self._switch_closure = closure
            self.auto_lr_record = self.tuner.switch(
                self.phase2, closure, step, metrics or {}, phase1_lr=phase1_lr
            )
        self._phase = 2
        self.switch_step = step
        self._warn_if_scheduled_from_phase1()
        if self.phase2_scheduler_factory is not None:
            # built on phase 2 at the switch, from the step size phase 2 starts with (measured or
            # given), and stepped after every phase-2 step
            self.phase2_scheduler = self.phase2_scheduler_factory(self.phase2)
        if self.auto_lr_record:
            info["auto_lr"] = dict(self.auto_lr_record)
        if getattr(self.criterion, "stalled", False):
            info["cause"] = "stall"  # phase 1 stopped improving short of the threshold
        self._emit("switch", step, metric_carried=self.metric_carried, **info)

    def _closure(self, closure: LossClosure | None) -> LossClosure | None:
        """The curvature closure to use: the one given, else ``set_curvature_closure``'s, else
        the last one ``observe()`` was given."""
        return closure or self._curvature_closure or self._last_closure

    def _check_step_pace(self, step: int) -> None:
        """The windows (the switch's hold and stall, phase 2's collapse window, the loosening's
        20 steps) count in the steps observe() is given. Warn once where those advance at a
        different pace from the optimizer's steps (a loop that passes its epoch, say: a
        300-step collapse window would then last 300 epochs)."""
        if self._step_warned:
            return
        if self._step_ref is None:
            self._step_ref = (step, self.num_steps)
            return
        given, taken = step - self._step_ref[0], self.num_steps - self._step_ref[1]
        if taken >= PACE_AFTER and not 0.5 <= given / taken <= 2.0:
            self._step_warned = True
            warnings.warn(
                f"GROKtimizer: observe(step=...) advanced by {given} while {taken} optimizer "
                "steps were taken; its windows (the switch's hold and stall, phase 2's collapse "
                "window) count in observe's steps. Pass the number of optimizer steps (or no "
                "step)",
                stacklevel=3,
            )

    def _check_closure(self, closure: LossClosure | None) -> None:
        """Phase 2's automatic η is measured at the switch on a closure's loss: say so at the
        first evaluation with none to use (none given to this or an earlier ``observe()``, none
        set), not at the switch (a loop that never passed one trained all of phase 1, 690 steps
        on a small MLP, then raised there)."""
        if closure is None and self.tuner.lr_auto and self.tuner.fallback_lr is None:  # type: ignore[union-attr]
            raise ValueError(
                "GROKtimizer: lr='auto' measures the curvature at the switch on a closure's "
                "loss, and observe() got none: pass closure=<fn returning the training loss> "
                "to observe(), call set_curvature_closure(fn) once, or give lr=<float>"
            )

    def _normed(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """``metrics`` for the tuner, with ``weight_norm`` the 2-norm of every parameter held (as
        the pipeline's) where the loop gave none: its rules read the norm (decay winning shrinks
        it; a recovering fall at a steady norm is held), and without one they were off."""
        if self.tuner is None or metrics.get("weight_norm") is not None:
            return metrics
        held = (p for g in self.param_groups for p in g["params"])
        return {**metrics, "weight_norm": float(parameter_norm(held))}

    def _mean_over_ranks(self) -> MeanOverRanks | None:
        """The averaging over ranks when ``distributed`` is on (see ``__init__``), also handed
        to the tuner for its probes; None otherwise."""
        mean = mean_over_ranks("GROKtimizer", self.distributed)
        if self.tuner is not None:
            self.tuner.reduce = None if mean is None else mean.tensors
        return mean

    def _check_switch_metrics(self, metrics: dict[str, Any]) -> None:
        """Warn once when ``MISSING_METRIC_AFTER`` observations have not given the switch what it
        reads (the default's ``train_acc``, say, in a loop that observes only the loss): phase 2
        would never start, and nothing else would say so."""
        self._seen_metrics.update(k for k, v in metrics.items() if v is not None)
        self._phase1_observations += 1
        if self._phase1_observations != MISSING_METRIC_AFTER:
            return
        missing = self.criterion.waits_for(self._seen_metrics)
        if missing:
            given = ", ".join(sorted(self._seen_metrics)) or "none"
            warnings.warn(
                f"GROKtimizer: the switch {self.criterion!r} reads {', '.join(missing)}, which "
                f"{MISSING_METRIC_AFTER} observations have not given (given: {given}); phase 2 "
                "starts only when it comes. Pass it to observe(), or a switch on what you "
                "observe (LossSwitch, StepSwitch)",
                stacklevel=3,
            )

    def _warn_if_scheduled_from_phase1(self) -> None:
        """An LR scheduler built on this optimizer (not on ``opt.phase1``) keeps the phase-1 base
        learning rates and would overwrite phase 2's step size from here on: say so."""
        if getattr(self.step, "_wrapped_by_lr_sched", False):
            warnings.warn(
                "GROKtimizer: an LR scheduler was built on the GROKtimizer itself; after the "
                "switch it would set phase 2's lr from phase 1's base lr. Build phase-1 "
                "schedules on opt.phase1 and pass phase2_scheduler=<optimizer -> scheduler> for "
                "phase 2",
                stacklevel=3,
            )

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
            "tuner": None if self.tuner is None else self.tuner.state_dict(),
            # events of a step (the noise measure at phase 2's first) wait for the next observe
            "pending_events": copy.deepcopy(self._pending_events),
            "phase2_scheduler": (
                None if self.phase2_scheduler is None else self.phase2_scheduler.state_dict()
            ),
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
        if self.tuner is not None and state_dict.get("tuner") is not None:
            self.tuner.load_state_dict(state_dict["tuner"])
        self._pending_events = copy.deepcopy(list(state_dict.get("pending_events", [])))
        sched = state_dict.get("phase2_scheduler")
        if self._phase == 2 and self.phase2_scheduler_factory is not None:
            self.phase2_scheduler = self.phase2_scheduler_factory(self.phase2)
            if sched is not None:
                self.phase2_scheduler.load_state_dict(sched)

    def __repr__(self) -> str:
        return (
            f"GROKtimizer(phase={self.phase}, switch_step={self.switch_step}, "
            f"criterion={self.criterion!r},\n  phase1={self.phase1!r},\n  phase2={self.phase2!r})"
        )
