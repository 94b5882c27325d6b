"""GPU figures in one command (a few minutes on an H200): single run vs seed ensembles.

    python bench/bench_gpu.py                       # CUDA, the default task (a+b mod 97, MLP)
    python bench/bench_gpu.py --device cpu --quick  # a smoke run of this script on CPU
    python bench/bench_gpu.py --sections batched    # only the batched-sweep rows

Section ``trainer``: member-steps/s for the reference-style loop (per-step .item(), metrics every
step), our Trainer as a single run, and ensembles of 8 and 32 seeds (vmap), with
trainer.compile off and on, plus peak CUDA memory. Each row is one fresh Trainer.
Section ``batched``: a minimal loop of one run (library optimizer, evaluation every
trainer.eval_every steps) against ``groktimizer.batched.BatchedOptimizer`` batches of 8, 32 and
128 members (``--members``), the loop of ``bench_ensemble.py``. Run it on an idle GPU.
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


def trainer_rate(ov: list[str], seeds: list[int] | None, steps: int) -> tuple[float, float]:
    from groktimizer.experiment.trainer import Trainer

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
    ap.add_argument("--sections", default="trainer,batched", help="trainer, batched or both")
    ap.add_argument("--members", default=None, help="batch sizes (default 8,32,128; quick 2,4)")
    args = ap.parse_args()
    quick = args.quick
    steps = args.steps or (20 if quick else 1000)
    ensembles = [2, 4] if quick else [8, 32]
    members = [int(k) for k in (args.members or ("2,4" if quick else "8,32,128")).split(",")]
    sections = args.sections.split(",")
    if args.device == "cpu":
        torch.set_num_threads(1)  # see _common.add_thread_arg: spinning threads on a shared CPU
    ov = [
        # the fixed default phase 2: lr 'auto' is measured per run and not batched
        "optimizer=adam_cdm",
        "schedule=biphasic",
        "grad_filter=none",
        f"trainer.max_steps={steps}",
        "trainer.stop_at_target=false",
        "trainer.plots=false",
        "trainer.progress=false",
        f"trainer.device={args.device}",
        f"trainer.checkpoint_every={10 * steps}",
        *(["dataset.p=11", "model.width=32", "model.embed_dim=8"] if quick else []),
    ]
    print(machine(), "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
    if "trainer" in sections:
        trainer_section(ov, steps, ensembles)
    if "batched" in sections:
        batched_section(ov, steps, members)


def trainer_section(ov: list[str], steps: int, ensembles: list[int]) -> None:
    from bench_loop import run_reference

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
    print(f"{steps} steps per run; throughput in member-steps/s")
    headers = ["loop", "seeds", "compile", "member-steps/s", "vs Trainer x1", "peak CUDA MB"]
    print(table(headers, rows))


def _peak_mb() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def batched_section(ov: list[str], steps: int, members: list[int]) -> None:
    """Separate minimal runs vs one BatchedOptimizer batch of K members (member-steps/s)."""
    from bench_ensemble import batched, plain

    plain(ov, [0], min(steps, 50))  # warm-up (CUDA context, kernels)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    single = 1 / plain(ov, [0], steps)
    rows = [["separate run (minimal loop)", 1, single, 1.0, f"{_peak_mb():.0f}"]]
    for k in members:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        rate = 1 / batched(ov, list(range(k)), steps)
        rows.append([f"BatchedOptimizer x{k}", k, rate, rate / single, f"{_peak_mb():.0f}"])
    print(f"{steps} steps per run; throughput in member-steps/s (K separate runs = the x1 rate)")
    headers = ["loop", "members", "member-steps/s", "vs separate", "peak CUDA MB"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
