"""Structured configs (schemas) for the Hydra pipeline.

Every YAML file under ``conf/`` extends one of these dataclasses through its defaults list, so a
wrong type or an unknown key fails at composition. Range checks that types cannot express
(damping > 0, train fraction in (0, 1), ...) live in :func:`validate`, which runs before any
work starts and raises :class:`ConfigError` with one line naming the value and what is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from groktimizer.adam_cdm_l2 import AdamCDML2
from groktimizer.cdm import CDM

PHASE2 = (CDM, AdamCDML2)  # what a biphasic schedule accepts as phase 2


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
    label_noise: float = 0.0


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
class LSTMConfig:
    _target_: str = "groktimizer.experiment.models.LSTM"
    _partial_: bool = True
    hidden: int = 128
    embed_dim: int = 64
    n_layers: int = 1
    init_scale: float = 1.0


@dataclass
class CNNConfig:
    _target_: str = "groktimizer.experiment.models.CNN"
    _partial_: bool = True
    channels: list[int] = field(default_factory=lambda: [32, 64])
    width: int = 128
    norm: str = "none"  # none | batch | group
    activation: str = "relu"
    init_scale: float = 1.0


@dataclass
class LinearConfig:
    _target_: str = "groktimizer.experiment.models.Linear"
    _partial_: bool = True
    bias: bool = False


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
    # how ensemble members' forward passes run: vmap (batched), loop (one after another), auto
    # (vmap on CUDA, loop on CPU, where one after another is faster for these small models)
    ensemble: str = "auto"
    compile: bool = False
    progress: bool = True  # a progress bar on a terminal, else a log line every 30 s
    print_config: bool = False  # log the resolved config (YAML) at the start
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
    """The composed run. ``optimizer``, ``schedule``, ``grad_filter`` and ``guard`` are free-form
    ``_target_`` nodes (any importable class), validated by the constructors they name."""

    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING
    grad_filter: Any = MISSING
    guard: Any = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = 0
    experiment_name: str = "default"
    # parameters whose names contain one of these get no weight decay ("bias", "norm", "embed")
    no_decay: list[str] = field(default_factory=list)
    # a biphasic schedule takes a CDM-type phase 2 (CDM, AdamCDM, AdamCDML2); true lets any in
    allow_any_phase2: bool = False


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
        "lstm_schema": LSTMConfig,
        "cnn_schema": CNNConfig,
        "linear_schema": LinearConfig,
    },
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
# Every field of the trainer and logger schemas has a check here (a test walks the schemas);
# datasets, models, optimizers, schedules, filters and guards are checked by their constructors.
def _int(lo: int, hi: int | None = None, none: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        if v is None:
            return none
        return type(v) is int and v >= lo and (hi is None or v <= hi)

    text = f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
    return ok, ("null or " + text) if none else text


def _num(lo: float, hi: float, lo_open: bool = True, none: bool = False):
    def ok(v: Any) -> bool:
        if v is None:
            return none
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > lo if lo_open else v >= lo) and v <= hi

    left = "(" if lo_open else "["
    hi_s = "inf)" if hi == math.inf else f"{hi:g}]"
    text = f"a number in {left}{lo:g}, {hi_s}"
    return ok, ("null or " + text) if none else text


def _choice(*options: str):
    return (lambda v: str(v).lower() in options), "one of " + ", ".join(options)


def _bool():
    return (lambda v: isinstance(v, bool)), "true or false"


def _str(max_len: int = 100, none: bool = False):
    def ok(v: Any) -> bool:
        if v is None:
            return none
        return isinstance(v, str) and 0 < len(v) <= max_len and "/" not in v and "\0" not in v

    return ok, f"a non-empty name of at most {max_len} characters without '/'"


def _seeds():
    def ok(v: Any) -> bool:
        if v is None:
            return True
        vals = list(v)
        return (
            len(vals) > 0
            and all(type(s) is int and 0 <= s < 2**63 for s in vals)
            and len(set(vals)) == len(vals)
        )

    return ok, "null or a non-empty list of distinct integers in [0, 2^63)"


def _device():
    def ok(v: Any) -> bool:
        s = str(v)
        return s in ("auto", "cpu", "cuda") or (s.startswith("cuda:") and s[5:].isdigit())

    return ok, "auto, cpu, cuda or cuda:N"


MAX_STEPS = 10**9
TRAINER_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_steps": _int(1, MAX_STEPS),
    "eval_every": _int(1, MAX_STEPS),
    "batch_size": _int(1, none=True),
    "device": _device(),
    "dtype": _choice("float32", "float64"),
    "loss": _choice("auto", "cross_entropy", "mse"),
    "target_val_acc": _num(0, 1),
    "stop_at_target": _bool(),
    "interp_threshold": _num(0, 1),
    "regression_tol": _num(0, math.inf),
    "checkpoint_every": _int(1, MAX_STEPS),
    "resume": _choice("auto", "true", "false"),
    "seeds": _seeds(),
    "ensemble": _choice("auto", "vmap", "loop"),
    "compile": _bool(),
    "progress": _bool(),
    "print_config": _bool(),
    "plots": _bool(),
    "sharpness": _bool(),
    "sharpness_iters": _int(1, 10_000),
    "max_loss": _num(0, math.inf, none=True),
    "grad_clip": _num(0, math.inf, none=True),
    "flush_denormal": _bool(),
    "threads": _int(1, 1024, none=True),
}
LOGGER_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kind": _choice("none", "wandb"),
    "mode": _choice("online", "offline", "disabled"),
    "project": _str(),
    "entity": _str(none=True),
    "group": _str(128, none=True),
    "tags": ((lambda v: all(isinstance(t, str) and 0 < len(t) <= 64 for t in v)), "strings"),
    "job_type": _str(64),
}
TOP_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": _int(0, 2**63 - 1),
    "experiment_name": _str(100),
    "no_decay": ((lambda v: all(isinstance(s, str) and s for s in v)), "a list of name parts"),
    "allow_any_phase2": _bool(),
}
_SECTIONS = {"trainer": TRAINER_CHECKS, "logger": LOGGER_CHECKS, "": TOP_CHECKS}


def validate(cfg: Any) -> None:
    """Check the fields no constructor sees and how fields relate. Raises ConfigError (one line)."""
    for section, checks in _SECTIONS.items():
        node = cfg[section] if section else cfg
        for key, (ok, accepted) in checks.items():
            value = node[key]
            if not ok(value):
                path = f"{section}.{key}" if section else key
                shown = (
                    list(value)
                    if hasattr(value, "__iter__") and not isinstance(value, str)
                    else value
                )
                raise ConfigError(f"{path}={shown!r} is invalid: accepted {accepted}")
    for group in ("optimizer",):
        if not cfg[group].get("_target_"):
            raise ConfigError(f"{group}._target_ is missing: name the class to build")
    if cfg.schedule.get("_target_") and not cfg.allow_any_phase2:
        # the CDM family (AdamCDM subclasses CDM) and AdamCDML2 are what phase 2 is for
        if not issubclass(_class(cfg.optimizer._target_, "optimizer._target_"), PHASE2):
            raise ConfigError(
                f"optimizer._target_={cfg.optimizer._target_} under a biphasic schedule is not a "
                "phase-2 optimizer: accepted CDM, AdamCDM or AdamCDML2 (groktimizer); for a "
                "one-phase baseline use method=<name> (e.g. method=adamw) or schedule=single, or "
                "set allow_any_phase2=true"
            )
    if not cfg.schedule.get("_target_"):
        for node in ("schedule", "optimizer"):
            for key in ("lr", "weight_decay"):
                if str(cfg[node].get(key, None)) == "auto":
                    raise ConfigError(
                        f"{node}.{key}='auto' is invalid: accepted only with a biphasic schedule "
                        "(the value is measured at the switch)"
                    )


def _class(path: str, key: str) -> type:
    from hydra.utils import get_class

    try:
        return get_class(path)
    except Exception as err:  # noqa: BLE001 -- any import failure is the user's path
        raise ConfigError(f"{key}={path!r} is invalid: accepted an importable class") from err
