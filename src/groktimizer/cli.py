"""What `train.py` does once Hydra has composed the config: validate, build, train, report."""

from __future__ import annotations

import statistics
import sys
from typing import Any

from groktimizer.config import ConfigError, validate


def _output_dir() -> str:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


def run(cfg: Any, run_dir: str | None = None) -> float:
    """Validate `cfg`, train, print a summary; exit with a one-line error on bad input."""
    from groktimizer.trainer import Trainer

    try:
        validate(cfg)
        trainer = Trainer(cfg, run_dir or _output_dir())
    except (ConfigError, ValueError, FileNotFoundError, KeyError, TypeError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    results = trainer.train()
    for res in results:
        print(
            f"seed {res['seed']}: {res['status']} | steps {res['steps']} | "
            f"t_interp {res['t_interp']} | t_switch {res['t_switch']} | "
            f"t_gen99 {res['t_gen99']} | val_acc {float(res['final_val_acc']):.4f} | "
            f"norm {float(res['final_weight_norm']):.2f} | {res['wall_time_s']:.1f}s"
        )
    print(f"outputs: {trainer.run_dir}")
    if trainer.exit_code:
        sys.exit(trainer.exit_code)
    budget = cfg.trainer.max_steps
    return float(
        statistics.median(
            r["t_target"] if r.get("t_target") is not None else budget for r in results
        )
    )
