"""Peak memory of a run, and time per step vs the modulus p and vs the MLP width.

    python bench/bench_scaling.py [--steps 50] [--ps 23,47,97,113] [--widths 64,256,512,1024]

Each point is a fresh subprocess running the Trainer (GROKtimizer, full batch, eval every 10
steps) for `--steps` steps; it reports the time per step of train() and the process's peak
resident memory (``ru_maxrss``, which includes the Python interpreter and torch, ~300 MB),
plus ``torch.cuda.max_memory_allocated`` when run on a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_thread_arg, apply_threads, machine, table  # noqa: E402

CHILD = r"""
import json, resource, sys, tempfile, time
sys.path.insert(0, {bench!r})
import torch
if {threads} > 0:
    torch.set_num_threads({threads})
from _common import compose
from groktimizer.experiment.trainer import Trainer
ov = {ov!r}
with tempfile.TemporaryDirectory() as d:
    t = Trainer(compose(*ov), d)
    t0 = time.perf_counter()
    t.train()
    dt = (time.perf_counter() - t0) / t.step
cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
n_params = sum(p.numel() for p in t.members[0].model.parameters())
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"ms": dt * 1e3, "rss_mb": rss, "cuda_mb": cuda, "params": n_params}}))
"""


def point(overrides: list[str], steps: int, threads: int, device: str) -> dict:
    ov = [
        f"trainer.max_steps={steps}",
        "trainer.stop_at_target=false",
        "trainer.plots=false",
        "trainer.progress=false",
        f"trainer.device={device}",
        f"trainer.checkpoint_every={10 * steps}",
        *overrides,
    ]
    code = CHILD.format(bench=str(Path(__file__).resolve().parent), threads=threads, ov=ov)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--ps", default="23,47,97,113")
    ap.add_argument("--widths", default="64,256,512,1024")
    ap.add_argument("--device", default="cpu")
    add_thread_arg(ap)
    args = ap.parse_args()
    apply_threads(args)  # the children set their own; this makes the header say so
    rows = []
    for p in args.ps.split(","):
        r = point([f"dataset.p={p}"], args.steps, args.threads, args.device)
        rows.append([f"p={p}", "512", f"{r['params']:,}", r["ms"], r["rss_mb"], r["cuda_mb"]])
    for w in args.widths.split(","):
        r = point([f"model.width={w}"], args.steps, args.threads, args.device)
        rows.append(["p=97", w, f"{r['params']:,}", r["ms"], r["rss_mb"], r["cuda_mb"]])
    print(machine())
    print(f"a+b mod p, 40% train, MLP (embed 128 per operand, 1 hidden layer), {args.steps} steps")
    print(table(["task", "width", "params", "ms/step", "peak RSS MB", "peak CUDA MB"], rows))


if __name__ == "__main__":
    main()
