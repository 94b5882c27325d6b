"""Training curves of one run: accuracy, loss and weight norm on a log step axis."""

from __future__ import annotations

import os
from typing import Any


def plot_run(rows: list[dict[str, Any]], path: str | os.PathLike, t_switch: int | None) -> None:
    """Write a PNG with train/val accuracy, train/val loss and weight norm; a line at the switch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [max(r["step"], 1) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [
        (axes[0], ("train_acc", "val_acc"), "accuracy", False),
        (axes[1], ("train_loss", "val_loss"), "loss", True),
        (axes[2], ("weight_norm",), "weight norm", False),
    ]
    for ax, keys, label, logy in panels:
        for key in keys:
            ys = [r.get(key) for r in rows]
            ys = [float("nan") if y is None or isinstance(y, str) else y for y in ys]
            ax.plot(steps, ys, label=key)
        if t_switch is not None:
            ax.axvline(max(t_switch, 1), color="k", ls="--", lw=1, label="switch")
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
