"""Optimizer step cost: CDM vs torch SGD(momentum, foreach=True); GROKtimizer vs bare CDM.

    python bench/bench_optimizer.py [--rounds 15] [--steps 200]

Same parameters and gradients for every variant (the default MLP's shapes at p=97 and the
reference 1-layer transformer's at p=113). Targets: CDM <= 1.10x SGD, GROKtimizer(phase 2) <=
1.05x bare CDM. Ratios are medians over interleaved rounds.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_thread_arg, apply_threads, interleaved, machine, median_ratio, table, timed  # noqa: E402

from groktimizer import CDM, GROKtimizer, StepSwitch, critical_momentum  # noqa: E402
from groktimizer.experiment.data import modular_arithmetic  # noqa: E402
from groktimizer.experiment.models import MLP, Transformer  # noqa: E402

LR, WD = 1.0, 1e-3


def params_of(model: torch.nn.Module) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ps = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    return ps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps per timing")
    add_thread_arg(ap)
    args = ap.parse_args()
    apply_threads(args)
    torch.set_flush_denormal(True)
    beta = critical_momentum(LR, WD)
    models = {
        # the config's default MLP (one hidden layer of 512), and a tiny one where the fixed
        # per-step cost (Python, hooks) is what shows
        "mlp p=97 (default)": MLP(modular_arithmetic(p=97), depth=1),
        "mlp p=23, width 32": MLP(modular_arithmetic(p=23), depth=1, width=32, embed_dim=8),
        "transformer p=113": Transformer(modular_arithmetic(p=113)),
    }
    rows = []
    for name, model in models.items():
        n_params = sum(p.numel() for p in model.parameters())
        opts = {
            "sgd_foreach": torch.optim.SGD(
                params_of(model),
                lr=LR,
                momentum=beta,
                dampening=0,
                weight_decay=WD,
                foreach=True,
            ),
            "cdm": CDM(params_of(model), lr=LR, weight_decay=WD),
            "cdm_foreach": CDM(params_of(model), lr=LR, weight_decay=WD, foreach=True),
            "groktimizer": GROKtimizer(
                params_of(model), lr=LR, weight_decay=WD, switch=StepSwitch(step=0)
            ),
        }
        opts["groktimizer"].switch()
        variants = {k: functools.partial(timed, o.step, args.steps) for k, o in opts.items()}
        t = interleaved(variants, args.rounds)
        med = {k: sorted(v)[len(v) // 2] * 1e6 for k, v in t.items()}
        rows.append(
            [
                name,
                f"{n_params:,}",
                med["sgd_foreach"],
                med["cdm"],
                med["cdm_foreach"],
                med["groktimizer"],
                median_ratio(t["cdm"], t["sgd_foreach"]),
                median_ratio(t["groktimizer"], t["cdm"]),
            ]
        )
    print(machine())
    print(f"{args.rounds} interleaved rounds x {args.steps} steps; times are medians in us/step")
    print(
        table(
            [
                "params",
                "n",
                "SGD foreach",
                "CDM",
                "CDM foreach",
                "GROKtimizer",
                "CDM / SGD (<=1.10)",
                "GROKtimizer / CDM (<=1.05)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
