"""K runs that differ only in optimizer hyperparameters and seed, stepped as one batch.

Each parameter is one stacked tensor ``[K, ...]`` (member k's copy at index k, e.g. from
:func:`stack_modules`, the forward run with ``torch.func.functional_call`` + ``vmap``). Every
member has its own hyperparameters, phase and switch step; the step is a few ``torch._foreach_*``
ops over the stack with the hyperparameters as ``[K, 1, ...]`` tensors, whatever K is.

Update rules (per member, exactly those of the library; t counts a member's updates of v):

- Adam / AdamW (``torch.optim.Adam`` / ``AdamW``; phase 1, or a single-phase run)::

      g ← g + λw (Adam)   or   w ← w·(1 − ηλ) (AdamW)
      m ← m + (1−β₁)(g − m);  v ← β₂v + (1−β₂)g²
      w ← w − (η / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)

- CDM (:class:`groktimizer.cdm.CDM`) and AdamCDM (:class:`groktimizer.adam_cdm.AdamCDM`)::

      d ← g + λw                                      (CDM)
      v ← β₂v + (1−β₂)g²;  d ← g / (max(√(v/(1−β₂ᵗ)), v_floor) + ε) + λw   (AdamCDM)
      buf ← β·buf + d;  w ← w − η·buf                 (Nesterov: w ← w − η(d + β·buf))
      β = max(0, 1 − ζ√(ηλ))²  from the member's current η at every step (Nesterov:
      max(0, (1 − s)/(1 + s)), s = ζ√(ηλ)), unless an explicit momentum is given

- Grokfast gradient filters (:mod:`groktimizer.filters`), before the update:
  EMA ``e ← αe + (1−α)g`` (e starts at g₁), ``g ← g + λ_f·e``; MA ``g ← g + λ_f·mean(last w)``.

A biphasic member (``MemberSpec.phase1`` set) runs Adam/AdamW until it switches, then its
``optimizer``; at the switch AdamCDM continues from Adam's second moment and step count, as
``AdamCDM.init_from_adam`` does (here they are the same tensors), CDM starts a fresh buffer and a
phase-2 Adam/AdamW fresh moments. Members switch at different steps: each rule runs over the
whole stack when any member uses it and is committed with ``torch.where`` where only some do.
Inactive members (``set_active``) keep their parameters and optimizer state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .switch import AccuracySwitch, SwitchCriterion

__all__ = [
    "Phase1Spec",
    "EMASpec",
    "MASpec",
    "MemberSpec",
    "BatchedOptimizer",
    "stack_modules",
    "member_spec",
    "critical_momentum_batched",
]


def _real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check(owner: str, name: str, value: Any, ok: bool, accepted: str) -> None:
    if not ok:
        raise ValueError(f"{owner}: {name} must be {accepted}, got {value!r}")


def _check_betas(owner: str, betas: Any) -> None:
    ok = (
        isinstance(betas, (tuple, list))
        and len(betas) == 2
        and all(_real(b) and 0 <= b < 1 for b in betas)
    )
    _check(owner, "betas", betas, ok, "a pair of floats in [0, 1)")


@dataclass(frozen=True)
class Phase1Spec:
    """Phase 1 of a biphasic member: ``name`` adam | adamw (GROKtimizer's default: AdamW, wd 0)."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        o = "Phase1Spec"
        _check(o, "name", self.name, self.name in ("adam", "adamw"), "'adam' or 'adamw'")
        _check(o, "lr", self.lr, _real(self.lr) and self.lr > 0, "a float > 0")
        wd = self.weight_decay
        _check(o, "weight_decay", wd, _real(wd) and wd >= 0, "a float >= 0")
        _check_betas(o, self.betas)
        _check(o, "eps", self.eps, _real(self.eps) and self.eps >= 0, "a float >= 0")


@dataclass(frozen=True)
class EMASpec:
    """Grokfast-EMA filter of one member (:class:`groktimizer.filters.GradFilterEMA`)."""

    alpha: float = 0.98
    lamb: float = 2.0

    def __post_init__(self) -> None:
        a = self.alpha
        _check("EMASpec", "alpha", a, _real(a) and 0 <= a < 1, "in [0, 1)")
        _check("EMASpec", "lamb", self.lamb, _real(self.lamb), "a finite float")


@dataclass(frozen=True)
class MASpec:
    """Grokfast-MA filter of one member (:class:`groktimizer.filters.GradFilterMA`).

    ``window``, ``filter_type`` and ``warmup`` must be the same for all members of a batch.
    """

    window: int = 100
    lamb: float = 5.0
    filter_type: str = "mean"
    warmup: bool = True

    def __post_init__(self) -> None:
        w = self.window
        ok = isinstance(w, int) and not isinstance(w, bool) and w >= 1
        _check("MASpec", "window", w, ok, "an int >= 1")
        _check("MASpec", "lamb", self.lamb, _real(self.lamb), "a finite float")
        ft = self.filter_type
        _check("MASpec", "filter_type", ft, ft in ("mean", "sum"), "'mean' or 'sum'")


_OPTIMIZERS = ("cdm", "adam_cdm", "adam", "adamw")


@dataclass(frozen=True)
class MemberSpec:
    """One member: its (phase-2 or only) optimizer, optional phase 1, switch and filter.

    Fields mirror the pipeline's optimizer config (``optimizer.*``); those that do not apply to
    ``optimizer`` are ignored. ``betas``: (β₁, β₂) for adam/adamw, β₂ = ``betas[1]`` for adam_cdm.
    ``momentum``, ``nesterov``: as in CDM and AdamCDM (explicit β; None: critical).
    ``switch``: when a biphasic member leaves phase 1 (default ``AccuracySwitch()``, as
    GROKtimizer); a fresh criterion per member.
    """

    optimizer: str
    lr: float
    weight_decay: float
    damping: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    momentum: float | None = None
    nesterov: bool = False
    v_floor: float | None = None
    freeze_v: bool = False
    phase1: Phase1Spec | None = None
    switch: SwitchCriterion | None = None
    grad_filter: EMASpec | MASpec | None = None

    def __post_init__(self) -> None:
        o = "MemberSpec"
        name = self.optimizer
        _check(o, "optimizer", name, name in _OPTIMIZERS, f"one of {list(_OPTIMIZERS)}")
        if isinstance(self.lr, str):
            raise ValueError(
                f"{o}: lr must be a float > 0, got {self.lr!r} (resolve lr='auto' per member "
                "before batching)"
            )
        _check(o, "lr", self.lr, _real(self.lr) and self.lr > 0, "a float > 0")
        wd = self.weight_decay
        _check(o, "weight_decay", wd, _real(wd) and wd >= 0, "a float >= 0")
        d = self.damping
        _check(o, "damping", d, _real(d) and d > 0, "a float > 0 (1 = critical)")
        _check_betas(o, self.betas)
        _check(o, "eps", self.eps, _real(self.eps) and self.eps >= 0, "a float >= 0")
        m = self.momentum
        ok = m is None or (_real(m) and 0 <= m < 1)
        _check(o, "momentum", m, ok, "None or in [0, 1)")
        vf = self.v_floor
        ok = vf is None or (_real(vf) and vf >= 0)
        _check(o, "v_floor", vf, ok, "None or a float >= 0")
        if name in ("cdm", "adam_cdm") and m is None and wd == 0:
            raise ValueError(
                f"{o}: weight_decay must be > 0 for {name} without an explicit momentum (beta "
                f"depends on sqrt(lr*weight_decay)), got {wd!r}"
            )
        ok = self.phase1 is None or isinstance(self.phase1, Phase1Spec)
        _check(o, "phase1", self.phase1, ok, "None or a Phase1Spec")
        ok = self.switch is None or isinstance(self.switch, SwitchCriterion)
        _check(o, "switch", self.switch, ok, "None or a SwitchCriterion")
        ok = self.grad_filter is None or isinstance(self.grad_filter, (EMASpec, MASpec))
        _check(o, "grad_filter", self.grad_filter, ok, "None, an EMASpec or an MASpec")


def _call_args(factory: Any, owner: str, name: str) -> tuple[Any, dict[str, Any]]:
    """(class, keyword arguments with the class's defaults) of a ``functools.partial`` or class."""
    import inspect

    func = getattr(factory, "func", factory)
    if getattr(factory, "args", ()):
        raise ValueError(f"{owner}: {name} must take keyword arguments only, got {factory!r}")
    kwargs = {
        k: p.default
        for k, p in inspect.signature(func).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    kwargs.update(getattr(factory, "keywords", {}) or {})
    return func, kwargs


def _is(func: Any, cls: type) -> bool:
    return isinstance(func, type) and issubclass(func, cls)


def _pair(x: Any) -> tuple[float, float]:
    return (float(x[0]), float(x[1]))


def _from_optimizer(factory: Any, owner: str) -> dict[str, Any]:
    from .adam_cdm import AdamCDM
    from .cdm import CDM

    func, kw = _call_args(factory, owner, "optimizer")
    if kw.get("maximize") or kw.get("amsgrad"):
        raise ValueError(f"{owner}: optimizer must not set maximize or amsgrad, got {factory!r}")
    if _is(func, AdamCDM):  # before CDM: AdamCDM may subclass it
        keys = ("lr", "weight_decay", "damping", "eps", "v_floor", "freeze_v")
        keys += tuple(k for k in ("nesterov", "momentum") if k in kw)
        return {"optimizer": "adam_cdm", "betas": (0.9, kw["beta2"]), **{k: kw[k] for k in keys}}
    if _is(func, CDM):
        keys = ("lr", "weight_decay", "damping", "nesterov", "momentum")
        return {"optimizer": "cdm", **{k: kw[k] for k in keys}}
    if _is(func, torch.optim.Adam) or _is(func, torch.optim.AdamW):
        decoupled = _is(func, torch.optim.AdamW) or bool(kw.get("decoupled_weight_decay"))
        return {
            "optimizer": "adamw" if decoupled else "adam",
            "lr": kw["lr"],
            "weight_decay": kw["weight_decay"],
            "betas": _pair(kw["betas"]),
            "eps": kw["eps"],
        }
    if _is(func, torch.optim.SGD):  # SGD(momentum m, dampening 0) is CDM with momentum m
        if kw.get("dampening", 0) != 0:
            raise ValueError(f"{owner}: optimizer SGD must have dampening 0, got {factory!r}")
        keys = ("lr", "weight_decay", "nesterov", "momentum")
        return {"optimizer": "cdm", **{k: kw[k] for k in keys}}
    raise ValueError(
        f"{owner}: optimizer must build CDM, AdamCDM, torch Adam, AdamW or SGD, got {factory!r}"
    )


def member_spec(optimizer: Any, schedule: Any = None, grad_filter: Any = None) -> MemberSpec:
    """The ``MemberSpec`` of a run built from the same objects a single run is built from.

    ``optimizer``: ``params -> Optimizer`` (a ``functools.partial`` of CDM, AdamCDM, torch Adam,
    AdamW or SGD, as ``instantiate`` makes from a ``_partial_`` config); ``schedule``: None (one
    phase) or a partial of ``GROKtimizer`` (its ``phase1`` partial and ``switch`` criterion are
    read; the criterion is copied, one per member); ``grad_filter``: None, a ``GradFilterEMA`` or
    a ``GradFilterMA``. Arguments the batch cannot reproduce fail with a ValueError.
    """
    import copy

    from .biphasic import GROKtimizer, default_phase1
    from .filters import GradFilterEMA, GradFilterMA

    o = "member_spec"
    spec = _from_optimizer(optimizer, o)
    if schedule is not None:
        func, kw = _call_args(schedule, o, "schedule")
        if not _is(func, GROKtimizer):
            raise ValueError(f"{o}: schedule must be None or build GROKtimizer, got {schedule!r}")
        if kw.get("lr") is not None or kw.get("weight_decay") is not None:
            raise ValueError(
                f"{o}: schedule must not set lr or weight_decay (lr='auto' is measured per run, "
                f"not batched), got lr={kw.get('lr')!r}, weight_decay={kw.get('weight_decay')!r}"
            )
        p1 = _from_optimizer(kw.get("phase1") or default_phase1, o)
        if p1["optimizer"] not in ("adam", "adamw"):
            raise ValueError(f"{o}: schedule.phase1 must build torch Adam or AdamW, got {p1!r}")
        keys = ("lr", "weight_decay", "betas", "eps")
        spec["phase1"] = Phase1Spec(p1["optimizer"], **{k: p1[k] for k in keys})
        sw = kw.get("switch")
        spec["switch"] = copy.deepcopy(sw) if sw is not None else None
    if isinstance(grad_filter, GradFilterEMA):
        spec["grad_filter"] = EMASpec(grad_filter.alpha, grad_filter.lamb)
    elif isinstance(grad_filter, GradFilterMA):
        g = grad_filter
        spec["grad_filter"] = MASpec(g.window, g.lamb, g.filter_type, g.warmup)
    elif grad_filter is not None:
        raise ValueError(
            f"{o}: grad_filter must be None, a GradFilterEMA or a GradFilterMA, got {grad_filter!r}"
        )
    return MemberSpec(**spec)


# Per-member settings of one phase, as columns of a [K, len(_COLS)] float64 table.
_COLS = (
    "cdm",  # 0: Adam/AdamW rule, 1: CDM/AdamCDM rule
    "lr",
    "weight_decay",
    "decoupled",  # AdamW
    "beta1",
    "beta2",
    "eps",
    "damping",
    "momentum",  # nan: critical
    "nesterov",
    "precond",  # AdamCDM
    "v_floor",
    "freeze_v",
    "no_decay_applies",  # 0 for phase-1 settings: GROKtimizer's phase 1 decays every tensor
)
_C = {name: i for i, name in enumerate(_COLS)}


def _phase1_row(p: Phase1Spec) -> list[float]:
    row = dict.fromkeys(_COLS, 0.0)
    row.update(
        lr=p.lr,
        weight_decay=p.weight_decay,
        decoupled=float(p.name == "adamw"),
        beta1=p.betas[0],
        beta2=p.betas[1],
        eps=p.eps,
        damping=1.0,
        momentum=math.nan,
    )
    return [float(row[c]) for c in _COLS]


def _optimizer_row(s: MemberSpec) -> list[float]:
    row = dict.fromkeys(_COLS, 0.0)
    row.update(lr=s.lr, weight_decay=s.weight_decay, eps=s.eps, damping=s.damping)
    row.update(beta1=s.betas[0], beta2=s.betas[1], momentum=math.nan, no_decay_applies=1.0)
    if s.optimizer in ("adam", "adamw"):
        row["decoupled"] = float(s.optimizer == "adamw")
    else:
        row["cdm"] = 1.0
        row["nesterov"] = float(s.nesterov)
        if s.momentum is not None:
            row["momentum"] = s.momentum
        if s.optimizer == "adam_cdm":
            row.update(precond=1.0, freeze_v=float(s.freeze_v), v_floor=s.v_floor or 0.0)
    return [float(row[c]) for c in _COLS]


def critical_momentum_batched(lr: Tensor, weight_decay: Tensor, damping: Tensor, nesterov: Tensor):
    """``groktimizer.cdm.critical_momentum`` elementwise over [K] float64 tensors."""
    s = damping * (lr * weight_decay).sqrt()
    heavy = (1.0 - s).clamp(min=0.0) ** 2
    nest = ((1.0 - s) / (1.0 + s)).clamp(min=0.0)
    return torch.where(nesterov > 0, nest, heavy)


def stack_modules(models: Sequence[nn.Module], share: bool = True) -> dict[str, Tensor]:
    """Stack the parameters of K same-architecture models into leaf tensors ``[K, ...]`` by name.

    With ``share`` each model's parameters become views of its slice of the stack, so model k
    always holds member k's current weights (evaluation, checkpoints and weight norms work on the
    models unchanged), and their ``.grad`` views of the stack's ``.grad`` (allocated here, zero):
    a backward through model k accumulates in place into slice k. So either train through the
    stack (``functional_call`` + ``vmap``) or run each model's own forward/backward; both fill the
    stacked gradients that ``BatchedOptimizer.step`` reads. Clear them with
    ``BatchedOptimizer.zero_grad()`` (in place), never ``model.zero_grad()`` (which unlinks them).
    """
    if not models:
        raise ValueError("stack_modules: models must be a non-empty sequence, got an empty one")
    named = [dict(m.named_parameters()) for m in models]
    names = list(named[0])
    for i, n in enumerate(named[1:], 1):
        if list(n) != names or any(n[k].shape != named[0][k].shape for k in names):
            raise ValueError(
                f"stack_modules: models[{i}] has other parameter names or shapes than models[0]"
            )
    stacked = {}
    for k in names:
        s = torch.stack([n[k].detach() for n in named]).requires_grad_(named[0][k].requires_grad)
        if share:
            s.grad = torch.zeros_like(s)
            for i, n in enumerate(named):
                n[k].data = s.detach()[i]
                n[k].grad = s.grad[i]
        stacked[k] = s
    return stacked


class BatchedOptimizer:
    """Steps K members stacked along dim 0 of every parameter; see the module docstring.

    Args:
        params: stacked parameters, each a tensor ``[K, ...]`` (leaf, with ``.grad`` after
            backward), all on one device with one floating dtype.
        members: K ``MemberSpec``; member k owns index k of every parameter.
        no_decay: one bool per parameter: True keeps it out of weight decay (biases, norm gains),
            like a param group with ``weight_decay=0``; β still uses the member's λ. As in
            GROKtimizer it does not apply to phase 1.
        max_grad_norm: clip each member's gradient (after the filter) to this total norm, as
            ``torch.nn.utils.clip_grad_norm_`` on its own parameters (None: no clipping).

    Per member: ``phase`` (1, or 2 after the switch; single-phase members stay 1),
    ``switch_step``, ``lr`` (current η), ``momentum_used`` (β of the last CDM step, nan under
    Adam), ``num_steps``; :meth:`member_row` gives them as one member's log fields.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        members: Sequence[MemberSpec],
        no_decay: Sequence[bool] | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        o = "BatchedOptimizer"
        if isinstance(params, Tensor):
            raise ValueError(f"{o}: params must be a sequence of stacked tensors, got a Tensor")
        params = list(params)
        members = list(members)
        _check(o, "members", members, len(members) >= 1, "a non-empty sequence of MemberSpec")
        for i, m in enumerate(members):
            _check(o, f"members[{i}]", m, isinstance(m, MemberSpec), "a MemberSpec")
        _check(o, "params", params, len(params) >= 1, "a non-empty sequence of tensors")
        k = len(members)
        for i, p in enumerate(params):
            ok = isinstance(p, Tensor) and p.dim() >= 1 and p.shape[0] == k
            _check(o, f"params[{i}]", getattr(p, "shape", p), ok, f"a tensor [K={k}, ...]")
            ok = p.is_floating_point() and p.device == params[0].device
            ok = ok and p.dtype == params[0].dtype
            _check(o, f"params[{i}]", p.dtype, ok, "floating, on params[0]'s device and dtype")
        no_decay = [False] * len(params) if no_decay is None else [bool(x) for x in no_decay]
        ok = len(no_decay) == len(params)
        _check(o, "no_decay", no_decay, ok, f"one bool per parameter ({len(params)})")
        ok = max_grad_norm is None or (_real(max_grad_norm) and max_grad_norm > 0)
        _check(o, "max_grad_norm", max_grad_norm, ok, "None or a float > 0")
        filters = [m.grad_filter for m in members if m.grad_filter is not None]
        kinds = {type(f) for f in filters}
        _check(o, "members[*].grad_filter", kinds, len(kinds) <= 1, "all EMASpec or all MASpec")
        if filters and isinstance(filters[0], MASpec):
            shared = {(f.window, f.filter_type, f.warmup) for f in filters}
            ok = len(shared) == 1
            _check(o, "members[*].grad_filter", shared, ok, "one (window, filter_type, warmup)")

        self.params = params
        self.members = members
        self.no_decay = no_decay
        self.max_grad_norm = max_grad_norm
        self.K = k
        self.device, self.dtype = params[0].device, params[0].dtype
        f64 = torch.float64
        one = [_optimizer_row(m) for m in members]
        self._settings = {
            1: torch.tensor(
                [
                    _phase1_row(m.phase1) if m.phase1 else r
                    for m, r in zip(members, one, strict=True)
                ],
                dtype=f64,
            ),
            2: torch.tensor(one, dtype=f64),
        }
        self.biphasic = torch.tensor([m.phase1 is not None for m in members])
        self.criteria = [
            (m.switch if m.switch is not None else AccuracySwitch()) if m.phase1 else None
            for m in members
        ]
        self.phase = torch.ones(k, dtype=torch.int64)
        self.switch_step: list[int | None] = [None] * k
        self.num_steps = torch.zeros(k, dtype=torch.int64)
        self.active = torch.ones(k, dtype=torch.bool)
        self.momentum_used = torch.full((k,), math.nan, dtype=f64)
        self._step = torch.zeros(k, dtype=f64)  # updates of v (Adam's step, carried to AdamCDM)
        self._filter = filters[0] if filters else None
        self._filtered = torch.tensor([m.grad_filter is not None for m in members])
        fcol = [
            (m.grad_filter.lamb, getattr(m.grad_filter, "alpha", 0.0))
            if m.grad_filter
            else (0.0, 0.0)
            for m in members
        ]
        self._filter_lamb = torch.tensor([c[0] for c in fcol], dtype=f64)
        self._filter_alpha = torch.tensor([c[1] for c in fcol], dtype=f64)
        self.state: dict[str, list[Tensor | None]] = {}
        self.ma_count = 0
        self._dims = sorted({p.dim() for p in params})

    # ------------------------------------------------------------------ per-member readouts
    def _current(self) -> Tensor:
        """[K, len(_COLS)]: each member's settings in its current phase."""
        return torch.where((self.phase == 2)[:, None], self._settings[2], self._settings[1])

    @property
    def lr(self) -> Tensor:
        """Each member's current step size η ([K] float64, a copy)."""
        return self._current()[:, _C["lr"]].clone()

    def set_lr(self, lr: Sequence[float] | Tensor, members: Sequence[int] | None = None) -> None:
        """Set the current-phase η of ``members`` (default: all) to ``lr`` (one value each)."""
        idx = list(range(self.K)) if members is None else [int(i) for i in members]
        vals = torch.as_tensor(lr, dtype=torch.float64).reshape(-1).expand(len(idx))
        for i, v in zip(idx, vals.tolist(), strict=True):
            if not (_real(v) and v > 0):
                raise ValueError(f"BatchedOptimizer.set_lr: lr must be > 0, got {v!r}")
            self._settings[int(self.phase[i])][i, _C["lr"]] = v

    def set_active(self, active: Sequence[bool] | Tensor) -> None:
        """Members marked False keep their parameters and optimizer state at each step."""
        a = torch.as_tensor(active, dtype=torch.bool).reshape(-1)
        if a.numel() != self.K:
            raise ValueError(f"BatchedOptimizer.set_active: need {self.K} values, got {a.numel()}")
        self.active = a.clone()

    def member_row(self, k: int) -> dict[str, Any]:
        """Member k's ``phase`` (None for a single-phase member, as ``wrapper.phase_of``),
        ``switch_step``, ``lr`` and, under the CDM rule, ``momentum`` (β of its last step)."""
        row: dict[str, Any] = {
            "phase": int(self.phase[k]) if bool(self.biphasic[k]) else None,
            "switch_step": self.switch_step[k],
            "lr": float(self._current()[k, _C["lr"]]),
        }
        if not math.isnan(float(self.momentum_used[k])):
            row["momentum"] = float(self.momentum_used[k])
        return row

    def member_group(self, k: int) -> dict[str, Any]:
        """Member k's ``param_groups[0]`` as the library optimizer it stands for reports it:
        ``lr``, and under the CDM rule ``momentum_used`` (β at the current η, as CDM keeps it)."""
        cur = self._current()[k]
        group: dict[str, Any] = {"lr": float(cur[_C["lr"]])}
        if cur[_C["cdm"]] > 0:
            mom = float(cur[_C["momentum"]])
            if math.isnan(mom):
                beta = critical_momentum_batched(
                    cur[_C["lr"]], cur[_C["weight_decay"]], cur[_C["damping"]], cur[_C["nesterov"]]
                )
                mom = float(beta)
            group["momentum_used"] = mom
        return group

    # ------------------------------------------------------------------ switching
    def observe(
        self,
        step: int,
        metrics: Mapping[str, Sequence[float | None] | Tensor],
    ) -> list[list[dict[str, Any]]]:
        """Feed each active phase-1 member its metrics (``metrics[name][k]``); switch those whose
        criterion fires. Returns each member's events (``groktimizer.wrapper``): a switch gives
        ``{'step', 'event': 'switch', 'metric_carried'}``. As ``GROKtimizer.observe``, the
        phase-2 weight decay is passed as ``weight_decay`` unless given (for RhoSwitch)."""
        cols = {n: (v.tolist() if isinstance(v, Tensor) else list(v)) for n, v in metrics.items()}
        fired = [
            k for k in range(self.K) if self._fires(k, step, {n: v[k] for n, v in cols.items()})
        ]
        events: list[list[dict[str, Any]]] = [[] for _ in range(self.K)]
        if fired:
            self.switch(fired, step=step)
            for k in fired:
                events[k].append(self._switch_event(k))
        return events

    def observe_member(self, k: int, step: int, **metrics: Any) -> list[dict[str, Any]]:
        """:meth:`observe` for member ``k`` alone (its metrics as keywords, as
        ``GROKtimizer.observe`` takes them); returns its events."""
        if not self._fires(k, step, dict(metrics)):
            return []
        self.switch([k], step=step)
        return [self._switch_event(k)]

    def _fires(self, k: int, step: int, mk: dict[str, Any]) -> bool:
        crit = self.criteria[k]
        if crit is None or int(self.phase[k]) == 2 or not bool(self.active[k]):
            return False
        wd = float(self._settings[2][k, _C["weight_decay"]])
        if wd:
            mk.setdefault("weight_decay", wd)
        return bool(crit.observe(int(step), **mk))

    def _switch_event(self, k: int) -> dict[str, Any]:
        carried = 0  # as GROKtimizer: parameters whose Adam second moment AdamCDM continues
        if self._settings[2][k, _C["precond"]] > 0 and self._step[k] > 0:
            carried = sum(t is not None for t in self.state.get("exp_avg_sq", []))
        return {"step": self.switch_step[k], "event": "switch", "metric_carried": carried}

    @torch.no_grad()
    def switch(self, members: Sequence[int], step: int | None = None) -> None:
        """Move ``members`` (biphasic, in phase 1) to phase 2 at ``step`` (default: their own
        number of steps taken). AdamCDM keeps Adam's v and step; Adam/AdamW restart theirs."""
        idx = [int(i) for i in members]
        for i in idx:
            if not bool(self.biphasic[i]):
                raise ValueError(f"BatchedOptimizer.switch: member {i} has no phase 1")
            if int(self.phase[i]) == 2:
                raise ValueError(
                    f"BatchedOptimizer.switch: member {i} already switched at step "
                    f"{self.switch_step[i]}"
                )
        if not idx:
            return
        new = self._settings[2]
        restart = [i for i in idx if new[i, _C["cdm"]] == 0]  # phase-2 Adam: fresh moments
        if restart:
            sel = torch.tensor(restart, device=self.device)
            for name in ("exp_avg", "exp_avg_sq"):
                for t in self.state.get(name, []):
                    if t is not None:
                        t.index_fill_(0, sel, 0.0)
            self._step[restart] = 0.0
        for i in idx:
            self.phase[i] = 2
            self.switch_step[i] = int(self.num_steps[i]) if step is None else int(step)

    # ------------------------------------------------------------------ the step
    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero the stacked gradients in place (default: the members' ``.grad`` of
        ``stack_modules`` are views of them); ``set_to_none=True`` drops them instead."""
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    def _views(self, vecs: Sequence[Tensor], ps: Sequence[Tensor]) -> list[list[Tensor]]:
        """Each [K] host vector as one ``[K, 1, ...]`` view per tensor of ``ps``."""
        packed = torch.stack(list(vecs)).to(device=self.device, dtype=self.dtype)
        n = len(vecs)
        by_dim = {d: packed.view(n, self.K, *([1] * (d - 1))).unbind(0) for d in self._dims}
        return [[by_dim[p.dim()][j] for p in ps] for j in range(n)]

    def _masks(self, mask: Tensor, ps: Sequence[Tensor]) -> list[Tensor]:
        m = mask.to(self.device)
        by_dim = {d: m.view(self.K, *([1] * (d - 1))) for d in self._dims}
        return [by_dim[p.dim()] for p in ps]

    def _state(self, name: str, idx: list[int], init: str = "zeros") -> list[Tensor]:
        lst = self.state.setdefault(name, [None] * len(self.params))
        for i in idx:
            if lst[i] is None:
                lst[i] = torch.zeros_like(self.params[i], memory_format=torch.preserve_format)
        return [lst[i] for i in idx]  # type: ignore[misc]

    @staticmethod
    def _commit(real: list[Tensor], work: list[Tensor], masks: list[Tensor]) -> None:
        for r, w, m in zip(real, work, masks, strict=True):
            r.copy_(torch.where(m, w, r))

    def _decay(self, wd: Tensor, applies: Tensor) -> tuple[Tensor, Tensor]:
        """λ for decayed tensors, and for ``no_decay`` tensors (0 where no_decay applies)."""
        return wd, wd * (1.0 - applies)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of every active member; ``closure`` re-evaluates the loss (with grad)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not idx:
            return loss
        ps = [self.params[i] for i in idx]
        gs = [self.params[i].grad for i in idx]
        if any(g.is_sparse for g in gs):
            raise RuntimeError("BatchedOptimizer does not support sparse gradients")
        active = self.active
        if self._filter is not None:
            gs = self._apply_filter(idx, ps, gs, active & self._filtered)
        if self.max_grad_norm is not None:
            gs = self._clip(idx, gs)
        cur = self._current()
        is_cdm = cur[:, _C["cdm"]] > 0
        adam = active & ~is_cdm
        cdm = active & is_cdm
        if bool(adam.any()):
            self._adam_step(idx, ps, gs, cur, adam)
        if bool(cdm.any()):
            self._cdm_step(idx, ps, gs, cur, cdm)
        self.num_steps += active.long()
        return loss

    def _apply_filter(self, idx: list[int], ps: list[Tensor], gs: list[Tensor], on: Tensor):
        if not bool(on.any()):
            return gs
        full = bool(on.all())
        masks = None if full else self._masks(on, ps)
        f = self._filter
        if isinstance(f, EMASpec):
            fresh = "ema" not in self.state
            ema = self._state("ema", idx)
            if fresh:
                torch._foreach_copy_(ema, gs)
            alpha, one_minus, lamb = self._views(
                [self._filter_alpha, 1.0 - self._filter_alpha, self._filter_lamb], ps
            )
            work = ema if full else [e.clone() for e in ema]
            torch._foreach_mul_(work, alpha)
            torch._foreach_add_(work, torch._foreach_mul(gs, one_minus))
            out = torch._foreach_add(gs, torch._foreach_mul(work, lamb))
            if not full:
                self._commit(ema, work, masks)
        else:
            hist = self._ma_history(idx)
            slot = self.ma_count % f.window
            self.ma_count += 1
            for h, g, m in zip(hist, gs, masks or [None] * len(gs), strict=True):
                h[slot].copy_(g if m is None else torch.where(m, g, h[slot]))
            n = min(self.ma_count, f.window)
            if f.warmup and n < f.window:
                return gs
            totals = [h[:n].sum(0) for h in hist]
            if f.filter_type == "mean":
                torch._foreach_div_(totals, float(n))
            (lamb,) = self._views([self._filter_lamb], ps)
            out = torch._foreach_add(gs, torch._foreach_mul(totals, lamb))
        if not full:
            out = [torch.where(m, o, g) for m, o, g in zip(masks, out, gs, strict=True)]
        for p, g in zip(ps, out, strict=True):
            p.grad.copy_(g)  # in place: members' .grad may be views of it (stack_modules)
        return [p.grad for p in ps]

    def _ma_history(self, idx: list[int]) -> list[Tensor]:
        lst = self.state.setdefault("ma_history", [None] * len(self.params))
        for i in idx:
            if lst[i] is None:
                p = self.params[i]
                lst[i] = p.new_zeros((self._filter.window, *p.shape))
        return [lst[i] for i in idx]  # type: ignore[misc]

    def _clip(self, idx: list[int], gs: list[Tensor]) -> list[Tensor]:
        """Per member, ``clip_grad_norm_``: g ← g·min(1, c/(‖g‖ + 1e-6)) over its own tensors."""
        sq = torch.stack([g.reshape(self.K, -1).pow(2).sum(1) for g in gs]).sum(0)
        coef = (self.max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for g in gs:
            g.mul_(coef.view(self.K, *([1] * (g.dim() - 1))).to(g.dtype))
        return gs

    def _adam_step(self, idx, ps, gs, cur, mask: Tensor) -> None:
        full = bool(mask.all())
        step = torch.where(mask, self._step + 1, self._step)
        self._step = step
        t = step.clamp(min=1.0)
        lr, dec = cur[:, _C["lr"]], cur[:, _C["decoupled"]]
        wd = torch.where(mask, cur[:, _C["weight_decay"]], 0.0)  # others' λ must not gate ops
        b1, b2 = cur[:, _C["beta1"]], cur[:, _C["beta2"]]
        applies = cur[:, _C["no_decay_applies"]]
        wd_c, wd_c_nd = self._decay(wd * (1 - dec), applies)
        wd_d, wd_d_nd = self._decay(wd * dec, applies)
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        vecs = [
            wd_c,
            wd_c_nd,
            1 - lr * wd_d,
            1 - lr * wd_d_nd,
            1 - b1,
            b2,
            1 - b2,
            bc2**0.5,
            cur[:, _C["eps"]],
            -(lr / bc1),
        ]
        v = self._views(vecs, ps)
        nd = [self.no_decay[i] for i in idx]
        pick = lambda a, b: [y if n else x for x, y, n in zip(a, b, nd, strict=True)]  # noqa: E731
        c_wd, c_shrink = pick(v[0], v[1]), pick(v[2], v[3])
        w1, c_b2, c_omb2, c_bc2s, c_eps, c_neg_ss = v[4:]
        exp_avg, exp_avg_sq = self._state("exp_avg", idx), self._state("exp_avg_sq", idx)
        if full:
            wp, wm, wv = ps, exp_avg, exp_avg_sq
        else:
            wp = [x.clone() for x in ps]
            wm = [x.clone() for x in exp_avg]
            wv = [x.clone() for x in exp_avg_sq]
        if bool((wd_d != 0).any()):
            torch._foreach_mul_(wp, c_shrink)
        if bool((wd_c != 0).any()):
            gs = torch._foreach_add(gs, torch._foreach_mul(wp, c_wd))
        torch._foreach_lerp_(wm, gs, w1)
        torch._foreach_mul_(wv, c_b2)
        torch._foreach_addcmul_(wv, torch._foreach_mul(gs, c_omb2), gs)
        denom = torch._foreach_sqrt(wv)
        torch._foreach_div_(denom, c_bc2s)
        torch._foreach_add_(denom, c_eps)
        upd = torch._foreach_mul(wm, c_neg_ss)
        torch._foreach_div_(upd, denom)
        torch._foreach_add_(wp, upd)
        if not full:
            masks = self._masks(mask, ps)
            self._commit(ps, wp, masks)
            self._commit(exp_avg, wm, masks)
            self._commit(exp_avg_sq, wv, masks)

    def _cdm_step(self, idx, ps, gs, cur, mask: Tensor) -> None:
        full = bool(mask.all())
        lr = cur[:, _C["lr"]]
        wd = torch.where(mask, cur[:, _C["weight_decay"]], 0.0)
        nesterov, precond = cur[:, _C["nesterov"]], cur[:, _C["precond"]]
        mom = cur[:, _C["momentum"]]
        beta = critical_momentum_batched(lr, wd, cur[:, _C["damping"]], nesterov)
        beta = torch.where(mom.isnan(), beta, mom)
        self.momentum_used = torch.where(mask, beta, self.momentum_used)
        wd_t, wd_nd = self._decay(wd, cur[:, _C["no_decay_applies"]])
        pre = mask & (precond > 0)
        vecs = [wd_t, wd_nd, beta, -lr]
        if bool(pre.any()):
            b2 = cur[:, _C["beta2"]]
            upd_v = pre & ((cur[:, _C["freeze_v"]] == 0) | (self._step == 0))
            self._step = torch.where(upd_v, self._step + 1, self._step)
            bc2 = 1 - b2 ** self._step.clamp(min=1.0)
            vecs += [b2, 1 - b2, bc2, cur[:, _C["v_floor"]], cur[:, _C["eps"]]]
        v = self._views(vecs, ps)
        nd = [self.no_decay[i] for i in idx]
        c_wd = [y if n else x for x, y, n in zip(v[0], v[1], nd, strict=True)]
        c_beta, c_neg_lr = v[2], v[3]
        bufs = self._state("momentum_buffer", idx)
        masks = None if full else self._masks(mask, ps)
        if bool(pre.any()):
            c_b2, c_omb2, c_bc2, c_floor, c_eps = v[4:]
            vs = self._state("exp_avg_sq", idx)
            all_v = bool((upd_v == mask).all())
            wv = vs if (full and all_v) else [x.clone() for x in vs]
            if bool(upd_v.any()):
                torch._foreach_mul_(wv, c_b2)
                torch._foreach_addcmul_(wv, torch._foreach_mul(gs, c_omb2), gs)
                if not (full and all_v):
                    self._commit(vs, wv, self._masks(upd_v, ps))
            denom = torch._foreach_div(vs, c_bc2)
            torch._foreach_sqrt_(denom)
            torch._foreach_maximum_(denom, c_floor)
            torch._foreach_add_(denom, c_eps)
            d = torch._foreach_div(gs, denom)
            if not bool((pre == mask).all()):  # CDM and AdamCDM members in one batch
                pm = self._masks(pre, ps)
                d = [torch.where(m, x, g) for m, x, g in zip(pm, d, gs, strict=True)]
        else:
            d = list(gs)
        wp = ps if full else [x.clone() for x in ps]
        wb = bufs if full else [x.clone() for x in bufs]
        if bool((wd != 0).any()):
            d = torch._foreach_add(d, torch._foreach_mul(wp, c_wd))
        torch._foreach_mul_(wb, c_beta)
        torch._foreach_add_(wb, d)
        upd = wb
        if bool((mask & (nesterov > 0)).any()):
            nest = torch._foreach_add(d, torch._foreach_mul(wb, c_beta))
            nm = self._masks(nesterov > 0, ps)
            upd = [torch.where(m, x, b) for m, x, b in zip(nm, nest, wb, strict=True)]
        torch._foreach_add_(wp, torch._foreach_mul(upd, c_neg_lr))
        if not full:
            self._commit(ps, wp, masks)
            self._commit(bufs, wb, masks)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "K": self.K,
            "state": {
                n: [None if t is None else t.clone() for t in ts] for n, ts in self.state.items()
            },
            "ma_count": self.ma_count,
            "step": self._step.clone(),
            "settings": {ph: s.clone() for ph, s in self._settings.items()},
            "phase": self.phase.clone(),
            "switch_step": list(self.switch_step),
            "num_steps": self.num_steps.clone(),
            "active": self.active.clone(),
            "momentum_used": self.momentum_used.clone(),
            "criteria": [None if c is None else c.state_dict() for c in self.criteria],
        }

    def member_state_dict(self, k: int) -> dict[str, Any]:
        """Member ``k``'s slice of :meth:`state_dict` (its own checkpoint in a batched sweep)."""
        return {
            "batched_member": True,
            "state": {
                n: [None if t is None else t[k].clone() for t in ts]
                for n, ts in self.state.items()
                if n != "ma_history"
            },
            "ma_history": [
                None if t is None else t[:, k].clone() for t in self.state.get("ma_history", [])
            ],
            "ma_count": self.ma_count,
            "step": float(self._step[k]),
            "settings": {ph: s[k].clone() for ph, s in self._settings.items()},
            "phase": int(self.phase[k]),
            "switch_step": self.switch_step[k],
            "num_steps": int(self.num_steps[k]),
            "active": bool(self.active[k]),
            "momentum_used": float(self.momentum_used[k]),
            "criterion": None if self.criteria[k] is None else self.criteria[k].state_dict(),
        }

    @torch.no_grad()
    def load_member_state_dict(self, k: int, state: Mapping[str, Any]) -> None:
        """Load :meth:`member_state_dict` into member ``k``'s slice. A batch restored member by
        member must be restored at one ``ma_count`` (the MA filter's ring position is shared)."""
        if not state.get("batched_member"):
            raise ValueError(
                "BatchedOptimizer.load_member_state_dict: state is not a batched member's "
                f"(keys {sorted(state)[:6]}); a plain run's checkpoint resumes with the plain "
                "launcher"
            )
        for name, ts in state["state"].items():
            lst = self.state.setdefault(name, [None] * len(self.params))
            for i, t in enumerate(ts):
                if t is None:
                    continue
                if lst[i] is None:
                    lst[i] = torch.zeros_like(self.params[i])
                lst[i][k].copy_(t)
        hist = [t for t in state.get("ma_history", []) if t is not None]
        if hist:
            lst = self._ma_history(list(range(len(self.params))))
            for i, t in enumerate(state["ma_history"]):
                if t is not None:
                    lst[i][:, k].copy_(t)
        self.ma_count = int(state["ma_count"])
        self._step[k] = float(state["step"])
        for ph, s in state["settings"].items():
            self._settings[int(ph)][k] = s.to(torch.float64)
        self.phase[k] = int(state["phase"])
        self.switch_step[k] = state["switch_step"]
        self.num_steps[k] = int(state["num_steps"])
        self.active[k] = bool(state["active"])
        self.momentum_used[k] = float(state["momentum_used"])
        crit = state["criterion"]
        if self.criteria[k] is not None and crit is not None:
            self.criteria[k].load_state_dict(crit)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["K"]) != self.K:
            raise ValueError(
                f"BatchedOptimizer.load_state_dict: state has K={state['K']}, this batch K={self.K}"
            )
        self.state = {
            n: [None if t is None else t.detach().to(self.device, self.dtype).clone() for t in ts]
            for n, ts in state["state"].items()
        }
        self.ma_count = int(state["ma_count"])
        self._step = state["step"].clone().to(torch.float64)
        self._settings = {
            int(ph): s.clone().to(torch.float64) for ph, s in state["settings"].items()
        }
        self.phase = state["phase"].clone()
        self.switch_step = list(state["switch_step"])
        self.num_steps = state["num_steps"].clone()
        self.active = state["active"].clone()
        self.momentum_used = state["momentum_used"].clone()
        for c, s in zip(self.criteria, state["criteria"], strict=True):
            if c is not None and s is not None:
                c.load_state_dict(s)

    def __repr__(self) -> str:
        names = sorted({m.optimizer for m in self.members})
        return (
            f"BatchedOptimizer(K={self.K}, optimizers={names}, phases={self.phase.tolist()}, "
            f"switch_steps={self.switch_step})"
        )
