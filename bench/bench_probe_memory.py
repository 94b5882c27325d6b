"""Memory and time of the switch's curvature probe (20 Lanczos steps) against the model's size.

    python bench/bench_probe_memory.py [--widths 1024,2048,4096] [--iters 20] [--device cpu]

Each point is a fresh subprocess: an MLP 1024 -> width -> width -> 10 (ReLU, batch 64) takes 3
AdamW steps (params, gradients and Adam's two moments allocated), then one probe of
``top_eigenpair`` in the metric of a diagonal scale, as GROKtimizer's switch runs it. Reported:
the growth of the process's peak resident memory over its peak after the AdamW steps (and of
``torch.cuda.max_memory_allocated`` on a GPU), in MB and in multiples of the float32 weights, the
Hessian-vector products, the top eigenvalue and the probe's seconds. Variants: ``kept`` keeps every
Lanczos vector (float64, full reorthogonalisation; forced with a budget of 2**62 bytes),
``three-term`` keeps three float32 vectors and builds the Ritz vector in a second pass (budget 0),
``default`` is whichever ``LANCZOS_BASIS_BYTES`` picks.
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
import json, resource, time
import torch
from torch import nn
from groktimizer.curvature import top_eigenpair
if {threads} > 0:
    torch.set_num_threads({threads})
dev = torch.device({device!r})
torch.manual_seed(0)
w = {width}
model = nn.Sequential(nn.Linear(1024, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 10))
model = model.to(dev)
x, y = torch.randn(64, 1024, device=dev), torch.randint(0, 10, (64,), device=dev)
loss = lambda: nn.functional.cross_entropy(model(x), y)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
for _ in range(3):
    opt.zero_grad()
    loss().backward()
    opt.step()
params = list(model.parameters())
scale = [(s.sqrt() + 1e-8).rsqrt() for s in (opt.state[p]["exp_avg_sq"] for p in params)]
cuda = dev.type == "cuda"
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if cuda:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
base, cuda_base = rss(), (torch.cuda.memory_allocated() / 2**20 if cuda else None)
t0 = time.perf_counter()
h, vec, n = top_eigenpair(loss, params, iters={iters}, scale=scale, basis_bytes={budget})
if cuda:
    torch.cuda.synchronize()
dt = time.perf_counter() - t0
out = dict(params=sum(p.numel() for p in params), rss=rss() - base, h=h, hvps=n, s=dt)
out["cuda"] = torch.cuda.max_memory_allocated() / 2**20 - cuda_base if cuda else None
print(json.dumps(out))
"""

BUDGETS = {"kept": 2**62, "three-term": 0, "default": None}


def point(width: int, variant: str, iters: int, threads: int, device: str) -> dict:
    code = CHILD.format(
        threads=threads, device=device, width=width, iters=iters, budget=BUDGETS[variant]
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="1024,2048,4096")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--variants", default="kept,three-term,default")
    ap.add_argument("--device", default="cpu")
    add_thread_arg(ap)
    args = ap.parse_args()
    for v in args.variants.split(","):
        if v not in BUDGETS:
            ap.error(f"--variants: {v!r} is not one of {', '.join(BUDGETS)}")
    apply_threads(args)  # the children set their own; this makes the header say so
    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        for variant in args.variants.split(","):
            r = point(width, variant, args.iters, args.threads, args.device)
            mb = r["params"] * 4 / 2**20
            cuda = None if r["cuda"] is None else f"{r['cuda']:.0f} ({r['cuda'] / mb:.1f}x)"
            rows.append(
                [
                    f"{r['params']:,}",
                    variant,
                    f"{r['rss']:.0f} ({r['rss'] / mb:.1f}x)",
                    cuda,
                    r["hvps"],
                    f"{r['h']:.6g}",
                    r["s"],
                ]
            )
    print(machine())
    print(f"MLP 1024 -> width -> width -> 10, batch 64, {args.iters} Lanczos steps")
    heads = ["params", "variant", "+peak RSS MB (x weights)", "+peak CUDA MB (x weights)"]
    print(table([*heads, "HVPs", "top eigenvalue", "s"], rows))


if __name__ == "__main__":
    main()
