"""Seed ensembles: K seeds in one Trainer (vmap / loop) vs K separate runs, same total steps.

    python bench/bench_ensemble.py [--seeds 8] [--rounds 3] [--steps 200]
        [--configs small,default]

Throughput is member-steps per second (K x steps / wall time of train()). The separate runs
are K Trainers run one after the other in this process (the cheapest way to run them on a
2-core machine: no process start-up counted). Target: ensemble >= 3x separate runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_thread_arg,
    apply_threads,
    compose,
    interleaved,
    machine,
    median_ratio,
    table,
)

from groktimizer.experiment.trainer import Trainer  # noqa: E402

CONFIGS = {
    # where the reference grokking loops live on CPU: tiny full-batch steps, overhead-bound
    "small": ["dataset.p=23", "model.width=128", "model.embed_dim=32"],
    "default": [],  # a+b mod 97, MLP 2x128 -> 512 -> 97: compute-bound on CPU
}


def base(steps: int, extra: list[str]) -> list[str]:
    return [
        f"trainer.max_steps={steps}",
        "trainer.stop_at_target=false",
        "trainer.plots=false",
        "trainer.progress=false",
        "trainer.device=cpu",
        f"trainer.checkpoint_every={10 * steps}",
        *extra,
    ]


def separate(ov: list[str], seeds: list[int], steps: int) -> float:
    total = 0.0
    for s in seeds:
        with tempfile.TemporaryDirectory() as d:
            t = Trainer(compose(*ov, f"seed={s}"), d)
            t0 = time.perf_counter()
            t.train()
            total += time.perf_counter() - t0
    return total / (len(seeds) * steps)


def ensemble(ov: list[str], seeds: list[int], steps: int, mode: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        seeds_arg = "[" + ",".join(map(str, seeds)) + "]"
        t = Trainer(compose(*ov, f"trainer.seeds={seeds_arg}", f"trainer.ensemble={mode}"), d)
        t0 = time.perf_counter()
        t.train()
        return (time.perf_counter() - t0) / (len(seeds) * steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--configs", default="small,default")
    add_thread_arg(ap)
    args = ap.parse_args()
    apply_threads(args)
    seeds = list(range(args.seeds))
    rows = []
    for name in args.configs.split(","):
        ov = base(args.steps, CONFIGS[name])
        t = interleaved(
            {
                "separate": lambda ov=ov: separate(ov, seeds, args.steps),
                "vmap": lambda ov=ov: ensemble(ov, seeds, args.steps, "vmap"),
                "loop": lambda ov=ov: ensemble(ov, seeds, args.steps, "loop"),
            },
            args.rounds,
            warmup=0,
        )
        med = {k: sorted(v)[len(v) // 2] for k, v in t.items()}
        rows.append(
            [
                name,
                " ".join(CONFIGS[name]) or "(defaults)",
                1 / med["separate"],
                1 / med["loop"],
                1 / med["vmap"],
                median_ratio(t["separate"], t["loop"]),
                median_ratio(t["separate"], t["vmap"]),
            ]
        )
    print(machine())
    print(
        f"{args.seeds} seeds, {args.steps} steps each, {args.rounds} interleaved rounds; "
        "member-steps/s (medians)"
    )
    print(
        table(
            [
                "config",
                "overrides",
                "separate",
                "ensemble loop",
                "ensemble vmap",
                "loop / separate",
                "vmap / separate (>=3)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
