"""What `train.py` does once Hydra has composed the config: validate, build, train, report.

Bad input ends with one line on stderr, ``error: <the value> ...: accepted <what is>``, and exit
code 2, before anything that claims success is written: values out of range (:func:`validate`),
data that cannot be loaded, a checkpoint that does not belong to this run, and (through
:func:`main_with_clear_errors`) overrides Hydra cannot compose: an unknown group option, a
missing ``+experiment``, a wrong type, an unknown key.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import statistics
import sys
from collections.abc import Callable
from typing import Any

from groktimizer.experiment.builders import BuildError
from groktimizer.experiment.config import ConfigError, validate

EXIT_BAD_INPUT = 2
log = logging.getLogger("groktimizer")


def _output_dir() -> str:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def _fail(err: BaseException) -> None:
    msg = _one_line(err) or type(err).__name__
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


INVALID_JOBS: list[str] = []  # multirun jobs refused as bad input in this process
FAILED_JOBS: list[str] = []  # multirun jobs whose files could not be written (resumable)


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 -- not under Hydra
        return False


def _record_invalid(cfg: Any, run_dir: str, message: str) -> float:
    """A bad job of a multirun: results.json with status `invalid`, and the sweep goes on."""
    from omegaconf import OmegaConf

    from groktimizer.experiment import outputs, runio

    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 -- an unresolvable config is itself the problem
        config = OmegaConf.to_container(cfg, resolve=False)
    res = {
        "status": "invalid",
        "message": message,
        "seed": cfg.get("seed"),
        "experiment_name": cfg.get("experiment_name"),
        "method": outputs.hydra_choices().get("method"),
        "overrides": outputs.hydra_overrides(),
        "config": config,
        "code": outputs.code(),
    }
    path = os.path.join(run_dir, runio.RESULTS)
    if os.path.exists(path):  # another run's results (a locked or mismatched folder): keep them
        print(f"warning: {path} exists; the invalid job is not recorded there", file=sys.stderr)
    else:
        try:
            runio.write_json(path, res)
        except OSError as err:
            print(f"warning: could not record the invalid job in {run_dir}: {err}", file=sys.stderr)
    INVALID_JOBS.append(run_dir)
    print(
        f"error: {message} (job recorded as invalid in {run_dir}; the sweep goes on)",
        file=sys.stderr,
    )
    return math.inf


def run(cfg: Any, run_dir: str | None = None) -> float:
    """Validate `cfg`, train, print a summary; exit with a one-line error on bad input.

    In a multirun a bad job is recorded (results.json, status ``invalid``) and the sweep goes on.
    """
    trainer = prepare(cfg, run_dir or _output_dir())
    if isinstance(trainer, float):
        return trainer
    try:
        results = trainer.train()
    except OSError as err:  # a write failed (disk full, permissions): one line, files consistent
        return write_failed(trainer, err)
    return report(trainer, results)


def prepare(cfg: Any, run_dir: str, batched: bool = False) -> Any:
    """Validate `cfg` and build its Trainer, checked for resume and locked (nothing trained).

    Bad input: one line and exit 2, or in a multirun the job recorded as invalid and ``inf``
    returned (the batched launcher builds a group's Trainers with this, then trains them as one).
    """
    from hydra.errors import HydraException

    from groktimizer.experiment.trainer import Trainer

    if cfg.trainer.get("print_config"):
        from omegaconf import OmegaConf

        log.info("resolved config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        validate(cfg)
        trainer = Trainer(cfg, run_dir)
        trainer.batched_member = batched  # which checkpoints it may resume
        # a checkpoint that is missing (resume=true), unreadable, or from another config; the
        # run directory's lock (another live run there)
        trainer.prepare()
    except (
        ConfigError,  # a value out of range, a non-phase-2 optimizer under a biphasic schedule
        BuildError,  # a constructor refused its arguments (names the config node)
        ValueError,  # a data set's or checkpoint's one-line refusal
        OSError,  # a data path, resume=true without a checkpoint, a locked or unwritable dir
        pickle.UnpicklingError,
        HydraException,  # instantiate: a _target_ that does not exist
    ) as err:
        if _in_multirun():
            return _record_invalid(cfg, run_dir, _one_line(err) or type(err).__name__)
        _fail(err)
    return trainer


def write_failed(trainer: Any, err: OSError) -> float:
    """A run whose files could not be written: one line; the sweep goes on, a single run exits 1."""
    print(
        f"error: writing the run's files failed: {_one_line(err)}; the last checkpoint in "
        f"{trainer.run_dir} is intact and resumable",
        file=sys.stderr,
    )
    if _in_multirun():  # the other jobs may still have room: the sweep goes on
        FAILED_JOBS.append(str(trainer.run_dir))
        return math.inf
    sys.exit(1)


def report(trainer: Any, results: list[dict[str, Any]]) -> float:
    """Log each member's summary; the sweep's objective (median steps to the target)."""
    for res in results:
        log.info(
            f"seed {res['seed']}: {res['status']} | steps {res['steps']} | "
            f"t_interp {res['t_interp']} | t_switch {res['t_switch']} | "
            f"t_gen99 {res['t_gen99']} | val_acc {float(res['final_val_acc']):.4f} | "
            f"norm {float(res['final_weight_norm']):.2f} | {res['wall_time_s']:.1f}s"
        )
    log.info(f"outputs: {trainer.run_dir}")
    if trainer.exit_code:
        sys.exit(trainer.exit_code)
    budget = trainer.cfg.trainer.max_steps
    return float(
        statistics.median(
            r["t_target"] if r.get("t_target") is not None else budget for r in results
        )
    )


# --------------------------------------------------------------------------- Hydra's errors
def describe_config_error(err: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raises while composing a config from overrides.

    Names the value given and what is accepted: the group's options for an unknown option (or
    ``+experiment``), the expected type for a wrong one, the schema's keys for an unknown key.
    """
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(err, MissingConfigException) and "/" in (err.missing_cfg_file or ""):
        group, _, name = err.missing_cfg_file.rpartition("/")
        options = [o for o in err.options or [] if not o.endswith("_schema")]
        accepted = ", ".join(options) if options else "none found"
        hint = f" (e.g. +{group}={options[0]})" if group == "experiment" and options else ""
        return f"{group}={name} is not a known option: accepted {accepted}{hint}"
    if isinstance(err, OverrideParseException):
        details = [
            line
            for line in str(err.message).splitlines()
            if line.strip() and not line.startswith(("See https", "Error parsing override"))
        ]
        return (
            f"cannot parse override {err.override!r}: {_one_line(' '.join(details))}; "
            "accepted key=value, +key=value, ~key"
        )
    cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None) or getattr(cause, "key", None) or "?"
        msg = getattr(cause, "msg", None) or str(cause)
        first = msg.strip().splitlines()[0] if msg.strip() else type(cause).__name__
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            schema = getattr(cause, "object_type", None)
            if dataclasses.is_dataclass(schema):
                keys = [f.name for f in dataclasses.fields(schema) if not f.name.startswith("_")]
                return f"{key} is not a known key ({first}): accepted {', '.join(keys)}"
            return f"{key} is not a known key: {first}"
        value = getattr(cause, "value", None)
        shown = f"{key}={value!r}" if value is not None else key
        return f"{shown} is invalid: {first}"
    lines = str(err).strip().splitlines()
    if "Config search path:" in lines:
        lines = lines[: lines.index("Config search path:")]
    return _one_line("\n".join(lines)) or type(err).__name__


def main_with_clear_errors(hydra_main: Callable[[], Any]) -> int:
    """Call a ``@hydra.main`` function; a config Hydra cannot compose ends with one line, exit 2.

    Hydra prints its own multi-line report and exits 1 unless HYDRA_FULL_ERROR=1, in which case
    it raises; we set it for the call and report composition errors ourselves. Other exceptions
    propagate with their full traceback (a bug, not bad input). A user who sets HYDRA_FULL_ERROR
    gets Hydra's raw exceptions as usual.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        hydra_main()
        return 0
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except (HydraException, OmegaConfBaseException) as err:
        print(f"error: {describe_config_error(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # Hydra creating its output folder: a file there, no permission
        print(f"error: cannot create the run's output directory: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)
    if FAILED_JOBS:
        print(
            f"error: {len(FAILED_JOBS)} job(s) of the sweep could not write their files (run the "
            "sweep again to resume them); the others ran",
            file=sys.stderr,
        )
    if INVALID_JOBS:
        print(
            f"error: {len(INVALID_JOBS)} job(s) of the sweep were invalid (status 'invalid' in "
            "their results.json); the others ran",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    return 1 if FAILED_JOBS else 0


def console_main() -> None:
    """`groktimizer-train`: train.py for an installed package (the config from the source tree's
    conf/, or --config-dir). Same arguments and exit codes as `python train.py`."""
    import hydra

    from groktimizer.experiment.config import register_configs

    register_configs()
    conf = os.environ.get("GROKTIMIZER_CONF", os.path.join(os.getcwd(), "conf"))

    @hydra.main(version_base="1.3", config_path=os.path.abspath(conf), config_name="train")
    def _main(cfg: Any) -> float:
        return run(cfg)

    sys.exit(main_with_clear_errors(_main))
