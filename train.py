"""Train one run (or a seed ensemble) from a Hydra config.

    python train.py                                   # GROKtimizer on a+b mod 97 (CPU, minutes)
    python train.py +experiment=NAME                  # a paper experiment
    python train.py optimizer.damping=0.5 trainer.max_steps=3000
    python train.py -m optimizer.damping=0.5,1,2 optimizer.weight_decay=1e-4,1e-3   # a sweep

Returns (for sweepers) the number of steps to the validation target, the budget when not reached.
Bad input (a value out of range, an unknown option or key, a wrong type) ends with one line
`error: ...` on stderr and exit code 2; SIGTERM / SIGUSR2 checkpoint the run and exit 143.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from groktimizer.experiment.cli import main_with_clear_errors
from groktimizer.experiment.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from groktimizer.experiment.cli import run

    return run(cfg)


if __name__ == "__main__":
    sys.exit(main_with_clear_errors(main))
