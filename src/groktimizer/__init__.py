"""GROKtimizer: biphasic optimization with Critically Damped Momentum for fast grokking.

The library part (optimizers, switch criteria, curvature, filters) imports only torch: no Hydra,
W&B or datasets, so it can be used in any training loop.
"""

from .adam_cdm import AdamCDM
from .adam_cdm_l2 import AdamCDML2
from .autotune import LR_AUTO_SAFETY_RANGE, Phase2Tuner, stability_bound, stable_lr
from .batched import (
    BatchedOptimizer,
    EMASpec,
    MASpec,
    MemberSpec,
    Phase1Spec,
    member_spec,
    stack_modules,
)
from .biphasic import GROKtimizer, default_phase1, default_phase2
from .cdm import CDM, critical_momentum
from .curvature import auto_lr, hvp, lanczos_top_eigenvalues, top_eigenpair, top_eigenvalue
from .filters import FilteredOptimizer, GradFilter, GradFilterEMA, GradFilterMA
from .guard import Guard
from .param_groups import split_decay_groups
from .switch import (
    AccuracySwitch,
    AllSwitch,
    AnySwitch,
    LossSwitch,
    NeverSwitch,
    RhoSwitch,
    StepSwitch,
    SwitchCriterion,
    make_switch,
)
from .wrapper import OptimizerWrapper, observe, phase_of

__version__ = "0.1.0"

__all__ = [
    "AdamCDML2",
    "BatchedOptimizer",
    "MemberSpec",
    "Phase1Spec",
    "EMASpec",
    "MASpec",
    "member_spec",
    "stack_modules",
    "CDM",
    "AdamCDM",
    "GROKtimizer",
    "critical_momentum",
    "default_phase1",
    "default_phase2",
    "SwitchCriterion",
    "AccuracySwitch",
    "LossSwitch",
    "StepSwitch",
    "RhoSwitch",
    "AnySwitch",
    "AllSwitch",
    "NeverSwitch",
    "make_switch",
    "hvp",
    "top_eigenvalue",
    "lanczos_top_eigenvalues",
    "auto_lr",
    "top_eigenpair",
    "Phase2Tuner",
    "stable_lr",
    "stability_bound",
    "LR_AUTO_SAFETY_RANGE",
    "GradFilter",
    "GradFilterEMA",
    "GradFilterMA",
    "FilteredOptimizer",
    "Guard",
    "split_decay_groups",
    "OptimizerWrapper",
    "observe",
    "phase_of",
]
