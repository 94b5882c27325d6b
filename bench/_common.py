"""Helpers shared by the benchmark scripts: config composition, interleaved timing, tables.

Machines here are shared and noisy, so every comparison runs its variants interleaved
(A B A B ...) in one process and reports the median of the per-round ratios.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def compose(*overrides: str) -> Any:
    """The project's Hydra config with `overrides`, as train.py composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from groktimizer.experiment.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return hydra_compose(config_name="train", overrides=list(overrides))


def interleaved(
    variants: dict[str, Callable[[], float]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Call each variant once per round, in turn; each returns seconds (per unit of work)."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        # alternate the order too, so neither variant always runs right after the other
        names = list(variants) if r % 2 == 0 else list(reversed(variants))
        for k in names:
            times[k].append(variants[k]())
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def timed(fn: Callable[[], Any], n: int, sync: Callable[[], None] | None = None) -> float:
    """Seconds per call of `fn`, over `n` calls."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    if sync is not None:
        sync()
    return (time.perf_counter() - t0) / n


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
        return str(x)

    cells = [[fmt(x) for x in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    return (
        f"{time.strftime('%Y-%m-%d')} | torch {torch.__version__} | {cpu} | "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads | "
        f"load avg {os.getloadavg()[0]:.1f}"
    )


def add_thread_arg(ap: Any) -> None:
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared, oversubscribed 2-core machine "
        "two spinning OpenMP threads made a small step ~25x slower; 0 keeps torch's default)",
    )


def apply_threads(args: Any) -> None:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
