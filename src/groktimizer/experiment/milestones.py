"""Milestones of one run in the paper's names: t_interp, t_switch, t_gen95, t_gen99, status."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tracker:
    t_interp: int | None = None
    t_switch: int | None = None
    t_gen95: int | None = None
    t_gen99: int | None = None
    t_target: int | None = None
    best_val_acc: float = 0.0
    status: str = "running"  # running | completed | reached-target | diverged | interrupted
    message: str = ""
    last: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def update(self, row: dict[str, Any], tcfg: Any) -> None:
        """Record the milestones `row` (one evaluation) reaches; mark divergence."""
        step = row["step"]
        if self.t_interp is None and row["train_acc"] >= tcfg.interp_threshold:
            self.t_interp = step
        if self.t_gen95 is None and row["val_acc"] >= 0.95:
            self.t_gen95 = step
        if self.t_gen99 is None and row["val_acc"] >= 0.99:
            self.t_gen99 = step
        if self.t_target is None and row["val_acc"] >= tcfg.target_val_acc:
            self.t_target = step
        self.best_val_acc = max(self.best_val_acc, row["val_acc"])
        if diverged(row, tcfg.max_loss):
            self.status = "diverged"
            self.message = (
                f"train loss {row['train_loss']} / weight norm {row['weight_norm']} "
                f"became non-finite or exceeded trainer.max_loss at step {step} "
                f"(phase {row['phase']}, lr {row['lr']:.3g})"
            )

    def finish_if_reached(self, tcfg: Any) -> None:
        if self.status == "running" and tcfg.stop_at_target and self.t_target is not None:
            self.status = "reached-target"
            self.message = f"val_acc >= {tcfg.target_val_acc} at step {self.t_target}"

    def summary(self) -> dict[str, Any]:
        """The milestone fields of results.json."""
        delay = None
        if self.t_gen99 is not None and self.t_interp is not None:
            delay = self.t_gen99 - self.t_interp
        return {
            "t_interp": self.t_interp,
            "t_switch": self.t_switch,
            "t_gen95": self.t_gen95,
            "t_gen99": self.t_gen99,
            "t_target": self.t_target,
            "grokking_delay": delay,
            "best_val_acc": self.best_val_acc,
        }


def diverged(row: dict[str, Any], max_loss: float | None) -> bool:
    values = [row[k] for k in ("train_loss", "weight_norm") if row.get(k) is not None]
    if not all(math.isfinite(v) for v in values):
        return True
    return max_loss is not None and row["train_loss"] > max_loss
