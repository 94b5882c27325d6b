"""Structured configs (schemas) for the Hydra pipeline.

Every YAML file under ``conf/`` extends one of these dataclasses through its defaults list, so a
wrong type or an unknown key fails at composition. Range checks that types cannot express
(damping > 0, train fraction in (0, 1), ...) live in :func:`validate`, which runs before any
work starts and raises :class:`ConfigError` with one line naming the value and what is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigError(ValueError):
    """A configuration value is out of its accepted range (one-line message)."""


# --------------------------------------------------------------------------- datasets
@dataclass
class ModularDataConfig:
    _target_: str = "groktimizer.experiment.data.modular_arithmetic"
    _partial_: bool = True
    op: str = "add"
    p: int = 97
    train_fraction: float = 0.4
    form: str = "tokens"


@dataclass
class SparseParityDataConfig:
    _target_: str = "groktimizer.experiment.data.sparse_parity"
    _partial_: bool = True
    n_bits: int = 40
    k: int = 3
    n_train: int = 1000
    n_val: int = 1000


@dataclass
class LinearRegressionDataConfig:
    _target_: str = "groktimizer.experiment.data.linear_regression"
    _partial_: bool = True
    n: int = 50
    d: int = 500
    noise: float = 0.0
    n_val: int = 500


@dataclass
class DigitsDataConfig:
    _target_: str = "groktimizer.experiment.data.digits"
    _partial_: bool = True
    n_train: int = 200
    normalize: bool = True


@dataclass
class MNISTDataConfig:
    _target_: str = "groktimizer.experiment.data.mnist"
    _partial_: bool = True
    n_train: int = 1000
    n_val: int = 10000
    source: str = "ylecun/mnist"
    cache_dir: str | None = None


# --------------------------------------------------------------------------- models
@dataclass
class MLPConfig:
    _target_: str = "groktimizer.experiment.models.MLP"
    _partial_: bool = True
    depth: int = 1
    width: int = 512
    activation: str = "relu"
    init_scale: float = 1.0
    bias: bool = True
    embed_dim: int = 128


@dataclass
class TransformerConfig:
    _target_: str = "groktimizer.experiment.models.Transformer"
    _partial_: bool = True
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    layer_norm: bool = False


@dataclass
class LinearConfig:
    _target_: str = "groktimizer.experiment.models.Linear"
    _partial_: bool = True
    bias: bool = False


# --------------------------------------------------------------------------- optimizers
@dataclass
class GuardConfig:
    """groktimizer.guard.Guard around the optimizer (phase 2 only under schedule=biphasic).

    Checked at every evaluation: a train loss above rollback_ratio * max(last good loss,
    loss_floor) (or non-finite) rolls back to the last good state with lr *= lr_factor; a rise
    above (1 + restart_rise) * previous loss resets the momentum (null: off);
    restart_on_alignment resets it whenever (g + wd*w) . dw > 0 (one host sync per step).
    """

    enabled: bool = False
    rollback_ratio: float = 10.0
    loss_floor: float = 1e-2
    lr_factor: float = 0.5
    restart_rise: float | None = None
    restart_on_alignment: bool = False


@dataclass
class OptimizerConfig:
    """The optimizer that runs alone (schedule=single) or as phase 2 (schedule=biphasic).

    ``name``: cdm | adam_cdm | sgd | adam | adamw. Fields that do not apply to a name are ignored.
    ``lr`` may be the string "auto" for CDM-type phase-2 optimizers (curvature at the switch).
    """

    name: str = "cdm"
    lr: Any = 1.0
    weight_decay: float = 1e-3
    damping: float = 1.0
    nesterov: bool = False
    momentum: float | None = None
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    # AdamCDM: floor on sqrt(v_hat) and whether v stays frozen after the switch
    v_floor: float | None = None
    freeze_v: bool = False
    # parameters whose names contain one of these get no weight decay ("bias", "norm", "embed")
    no_decay: list[str] = field(default_factory=list)
    # lr="auto": eta = safety / (h_max + weight_decay)
    lr_auto_safety: float = 0.5
    # adaptive restart / rollback guard (events land in results.json "events")
    guard: GuardConfig = field(default_factory=GuardConfig)


@dataclass
class Phase1Config:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    momentum: float = 0.0


@dataclass
class SwitchConfig:
    """When phase 1 hands over to phase 2.

    criterion: accuracy (train_acc >= threshold for `patience` evals) | loss (train_loss <=
    threshold) | step (at `step`) | rho (||grad L|| / (lambda ||w||) < threshold for `patience`).
    """

    criterion: str = "accuracy"
    threshold: float = 0.999
    patience: int = 3
    step: int | None = None


@dataclass
class ScheduleConfig:
    """Phase schedule: `single` runs `optimizer` alone; `biphasic` is GROKtimizer."""

    kind: str = "biphasic"
    phase1: Phase1Config = field(default_factory=Phase1Config)
    switch: SwitchConfig = field(default_factory=SwitchConfig)


@dataclass
class GradFilterConfig:
    """Gradient filter baseline (Grokfast): none | ema | ma."""

    kind: str = "none"
    alpha: float = 0.98
    lamb: float = 2.0
    window: int = 100
    warmup: bool = True


# --------------------------------------------------------------------------- trainer, logger
@dataclass
class TrainerConfig:
    max_steps: int = 5000
    eval_every: int = 10
    batch_size: int | None = None  # None: full batch
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 | float64
    loss: str = "auto"  # auto (cross_entropy / mse by task) | cross_entropy | mse
    # stop once validation accuracy has reached `target_val_acc` (t_gen99 by default)
    target_val_acc: float = 0.99
    stop_at_target: bool = True
    interp_threshold: float = 0.999  # train accuracy that defines t_interp
    regression_tol: float = 1e-2  # |residual| <= tol counts as "correct" for regression
    checkpoint_every: int = 1000
    resume: str = "auto"  # auto (resume if a checkpoint is in the run dir) | true | false
    seeds: list[int] | None = None  # train these seeds as one batched ensemble
    ensemble: str = "vmap"  # vmap | loop (how ensemble members' forward passes are batched)
    compile: bool = False
    progress: bool = True
    plots: bool = True
    sharpness: bool = False  # top Hessian eigenvalue at the end (power iteration)
    sharpness_iters: int = 50
    max_loss: float | None = None  # a train loss above this counts as diverged
    grad_clip: float | None = None
    flush_denormal: bool = True
    # CPU threads for torch (torch.set_num_threads); null keeps torch's default (one per core).
    # On a shared or oversubscribed CPU, 1 is often much faster for these small models.
    threads: int | None = None


@dataclass
class LoggerConfig:
    kind: str = "none"  # none | wandb
    mode: str = "offline"  # online | offline | disabled
    project: str = "groktimizer"
    entity: str | None = None
    group: str | None = None  # default: the experiment name
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"


@dataclass
class TrainConfig:
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: OptimizerConfig = MISSING
    schedule: ScheduleConfig = MISSING
    grad_filter: GradFilterConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = 0
    experiment_name: str = "default"


_SCHEMAS: dict[str, dict[str, Any]] = {
    "dataset": {
        "modular_schema": ModularDataConfig,
        "sparse_parity_schema": SparseParityDataConfig,
        "linear_regression_schema": LinearRegressionDataConfig,
        "digits_schema": DigitsDataConfig,
        "mnist_schema": MNISTDataConfig,
    },
    "model": {
        "mlp_schema": MLPConfig,
        "transformer_schema": TransformerConfig,
        "linear_schema": LinearConfig,
    },
    "optimizer": {"optimizer_schema": OptimizerConfig},
    "schedule": {"schedule_schema": ScheduleConfig},
    "grad_filter": {"grad_filter_schema": GradFilterConfig},
    "trainer": {"trainer_schema": TrainerConfig},
    "logger": {"logger_schema": LoggerConfig},
}


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, nodes in _SCHEMAS.items():
        for name, node in nodes.items():
            cs.store(group=group, name=name, node=node)


# --------------------------------------------------------------------------- validation
OPTIMIZERS = ("cdm", "adam_cdm", "sgd", "adam", "adamw")
PHASE1_OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("single", "biphasic")
SWITCH_CRITERIA = ("accuracy", "loss", "step", "rho")
GRAD_FILTERS = ("none", "ema", "ma")
DTYPES = ("float32", "float64")
LOSSES = ("auto", "cross_entropy", "mse")
LOGGERS = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled")
RESUME = ("auto", "true", "false")


def _fail(path: str, value: Any, accepted: str) -> None:
    raise ConfigError(f"{path}={value!r} is invalid: accepted {accepted}")


def _one_of(path: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        _fail(path, value, "one of " + ", ".join(options))


def validate(cfg: Any) -> None:
    """Check ranges the schema's types cannot express. Raises ConfigError (one line)."""
    t = cfg.trainer
    if t.max_steps <= 0:
        _fail("trainer.max_steps", t.max_steps, "an integer > 0")
    if t.eval_every <= 0:
        _fail("trainer.eval_every", t.eval_every, "an integer > 0")
    if t.checkpoint_every <= 0:
        _fail("trainer.checkpoint_every", t.checkpoint_every, "an integer > 0")
    if t.threads is not None and t.threads <= 0:
        _fail("trainer.threads", t.threads, "null (torch's default) or an integer > 0")
    if t.batch_size is not None and t.batch_size <= 0:
        _fail("trainer.batch_size", t.batch_size, "null (full batch) or an integer > 0")
    if not 0.0 < t.target_val_acc <= 1.0:
        _fail("trainer.target_val_acc", t.target_val_acc, "a number in (0, 1]")
    if not 0.0 < t.interp_threshold <= 1.0:
        _fail("trainer.interp_threshold", t.interp_threshold, "a number in (0, 1]")
    _one_of("trainer.dtype", t.dtype, DTYPES)
    _one_of("trainer.loss", t.loss, LOSSES)
    _one_of("trainer.resume", str(t.resume).lower(), RESUME)
    _one_of("trainer.ensemble", t.ensemble, ("vmap", "loop"))
    dev = str(t.device)
    if not (dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:")):
        _fail("trainer.device", dev, "auto, cpu, cuda or cuda:N")
    if t.seeds is not None:
        if len(t.seeds) == 0:
            _fail("trainer.seeds", list(t.seeds), "null or a non-empty list of integers")
        if len(set(t.seeds)) != len(t.seeds):
            _fail("trainer.seeds", list(t.seeds), "distinct seeds")

    o = cfg.optimizer
    _one_of("optimizer.name", o.name, OPTIMIZERS)
    if isinstance(o.lr, str):
        if o.lr != "auto" or o.name not in ("cdm", "adam_cdm"):
            _fail("optimizer.lr", o.lr, "a number > 0 (or 'auto' for cdm / adam_cdm)")
    elif isinstance(o.lr, bool) or not isinstance(o.lr, (int, float)) or not o.lr > 0:
        _fail("optimizer.lr", o.lr, "a number > 0")
    if o.weight_decay < 0:
        _fail("optimizer.weight_decay", o.weight_decay, "a number >= 0")
    if o.name in ("cdm", "adam_cdm"):
        if not o.damping > 0:
            _fail("optimizer.damping", o.damping, "a number > 0 (1 = critical damping)")
        if o.weight_decay == 0 and o.momentum is None:
            _fail(
                "optimizer.weight_decay",
                o.weight_decay,
                "a number > 0 for CDM (beta = (1 - damping*sqrt(lr*weight_decay))^2), "
                "or set optimizer.momentum",
            )
    if not 0 < o.lr_auto_safety <= 2:
        _fail("optimizer.lr_auto_safety", o.lr_auto_safety, "a number in (0, 2]")
    gd = o.guard
    if not gd.rollback_ratio > 1:
        _fail("optimizer.guard.rollback_ratio", gd.rollback_ratio, "a number > 1")
    if not gd.loss_floor > 0:
        _fail("optimizer.guard.loss_floor", gd.loss_floor, "a number > 0")
    if not 0 < gd.lr_factor < 1:
        _fail("optimizer.guard.lr_factor", gd.lr_factor, "a number in (0, 1)")
    if gd.restart_rise is not None and not gd.restart_rise > 0:
        _fail("optimizer.guard.restart_rise", gd.restart_rise, "null or a number > 0")

    s = cfg.schedule
    _one_of("schedule.kind", s.kind, SCHEDULES)
    if s.kind == "biphasic":
        _one_of("schedule.phase1.name", s.phase1.name, PHASE1_OPTIMIZERS)
        if not s.phase1.lr > 0:
            _fail("schedule.phase1.lr", s.phase1.lr, "a number > 0")
        if s.phase1.weight_decay < 0:
            _fail("schedule.phase1.weight_decay", s.phase1.weight_decay, "a number >= 0")
        sw = s.switch
        _one_of("schedule.switch.criterion", sw.criterion, SWITCH_CRITERIA)
        if sw.criterion == "step":
            if sw.step is None or sw.step < 0:
                _fail("schedule.switch.step", sw.step, "an integer >= 0 with criterion=step")
        elif sw.criterion == "accuracy" and not 0 < sw.threshold <= 1:
            _fail("schedule.switch.threshold", sw.threshold, "a number in (0, 1] for accuracy")
        elif not sw.threshold > 0:
            _fail("schedule.switch.threshold", sw.threshold, "a number > 0")
        if sw.patience < 1:
            _fail("schedule.switch.patience", sw.patience, "an integer >= 1")
    elif isinstance(o.lr, str):
        _fail("optimizer.lr", o.lr, "a number > 0 ('auto' needs schedule=biphasic)")

    g = cfg.grad_filter
    _one_of("grad_filter.kind", g.kind, GRAD_FILTERS)
    if g.kind == "ema" and not 0 <= g.alpha < 1:
        _fail("grad_filter.alpha", g.alpha, "a number in [0, 1)")
    if g.kind == "ma" and g.window < 1:
        _fail("grad_filter.window", g.window, "an integer >= 1")

    lg = cfg.logger
    _one_of("logger.kind", lg.kind, LOGGERS)
    _one_of("logger.mode", lg.mode, WANDB_MODES)
