"""GPU figures in one command (a few minutes on an H200): single run vs seed ensembles.

    python bench/bench_gpu.py                       # CUDA, the default task (a+b mod 97, MLP)
    python bench/bench_gpu.py --device cpu --quick  # a smoke run of this script on CPU

Prints member-steps/s for the reference-style loop (per-step .item(), metrics every step),
our Trainer as a single run, and ensembles of 8 and 32 seeds (vmap), with trainer.compile off
and on, plus peak CUDA memory. Each row is one fresh Trainer; run it on an idle GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compose, machine, table  # noqa: E402
from bench_loop import run_reference  # noqa: E402

from groktimizer.experiment.trainer import Trainer  # noqa: E402


def trainer_rate(ov: list[str], seeds: list[int] | None, steps: int) -> tuple[float, float]:
    extra = [] if seeds is None else ["trainer.seeds=[" + ",".join(map(str, seeds)) + "]"]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as d:
        t = Trainer(compose(*ov, *extra), d)
        t0 = time.perf_counter()
        t.train()
        dt = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    return len(seeds or [0]) * steps / dt, mem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    quick = args.quick
    steps = args.steps or (20 if quick else 1000)
    ensembles = [2, 4] if quick else [8, 32]
    ov = [
        f"trainer.max_steps={steps}",
        "trainer.stop_at_target=false",
        "trainer.plots=false",
        "trainer.progress=false",
        f"trainer.device={args.device}",
        f"trainer.checkpoint_every={10 * steps}",
        *(["dataset.p=11", "model.width=32", "model.embed_dim=8"] if quick else []),
    ]
    rows = []
    ref = 1 / run_reference(ov, steps)
    rows.append(["reference loop", 1, "off", ref, ref, ""])
    for compiled in ("false", "true"):
        ovc = [*ov, f"trainer.compile={compiled}"]
        trainer_rate(ovc, None, min(steps, 50))  # warm-up (and compilation caches)
        single, mem = trainer_rate(ovc, None, steps)
        rows.append(["Trainer", 1, compiled, single, single, f"{mem:.0f}"])
        for k in ensembles:
            rate, mem = trainer_rate(ovc, list(range(k)), steps)
            rows.append([f"Trainer vmap x{k}", k, compiled, rate, rate / single, f"{mem:.0f}"])
    print(machine(), "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
    print(f"{steps} steps per run; throughput in member-steps/s")
    headers = ["loop", "seeds", "compile", "member-steps/s", "vs Trainer x1", "peak CUDA MB"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
