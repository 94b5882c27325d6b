"""Steps/s of our Trainer vs a loop written as the reference grokking code writes it.

    python bench/bench_loop.py [--rounds 5] [--steps 300] [--sizes 23,97]

The reference loop (progress-measures / grokfast style): full batch, every step
``loss.item()`` and train + validation loss and accuracy with ``.item()`` (the validation pass
under no_grad), and here also ``optimizer.observe(...)`` so GROKtimizer switches as in the
Trainer. Same task, model, initialisation and optimizer (built by the Trainer from the same
config); both run the same number of steps from a fresh build each round (build not timed).
The Trainer's figure includes its evaluation every `trainer.eval_every` steps, the metrics file
and its final checkpoint. Target: Trainer >= 1.5x the reference loop's steps/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

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

from groktimizer.experiment.trainer import Trainer, compute_loss  # noqa: E402


def overrides(p: int, steps: int, extra: list[str]) -> list[str]:
    return [
        f"dataset.p={p}",
        f"trainer.max_steps={steps}",
        "trainer.stop_at_target=false",
        "trainer.plots=false",
        "trainer.progress=false",
        "trainer.device=cpu",
        f"trainer.checkpoint_every={10 * steps}",
        *extra,
    ]


def run_trainer(ov: list[str], steps: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        t = Trainer(compose(*ov), d)
        t0 = time.perf_counter()
        t.train()
        return (time.perf_counter() - t0) / steps


def run_reference(ov: list[str], steps: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        t = Trainer(compose(*ov), d)  # only to build the same data, model and optimizer
        (m,) = t.members
        model, opt, data = m.model, m.optimizer, m.data
        history = []
        t0 = time.perf_counter()
        for step in range(steps):
            logits = model(data.x_train)
            loss = compute_loss(logits, data.y_train, t.loss_kind, data.task)
            loss.backward()
            opt.step()
            opt.zero_grad()
            train_acc = (logits.argmax(-1) == data.y_train).float().mean().item()
            with torch.no_grad():
                val_logits = model(data.x_val)
                val_loss = compute_loss(val_logits, data.y_val, t.loss_kind, data.task).item()
                val_acc = (val_logits.argmax(-1) == data.y_val).float().mean().item()
            history.append((loss.item(), train_acc, val_loss, val_acc))
            opt.observe(step=step + 1, train_acc=train_acc, train_loss=history[-1][0])
        return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--sizes", default="23,97", help="comma-separated moduli p")
    ap.add_argument("--compile", action="store_true", help="also time trainer.compile=true")
    add_thread_arg(ap)
    args = ap.parse_args()
    apply_threads(args)
    rows = []
    for p in (int(s) for s in args.sizes.split(",")):
        ov = overrides(p, args.steps, [])
        variants = {
            "reference": lambda ov=ov: run_reference(ov, args.steps),
            "trainer": lambda ov=ov: run_trainer(ov, args.steps),
        }
        if args.compile:
            ovc = overrides(p, args.steps, ["trainer.compile=true"])
            variants["trainer_compiled"] = lambda ovc=ovc: run_trainer(ovc, args.steps)
        t = interleaved(variants, args.rounds)
        for k in variants:
            if k == "reference":
                continue
            rows.append(
                [
                    f"a+b mod {p}, MLP (default)",
                    k,
                    1 / sorted(t["reference"])[len(t["reference"]) // 2],
                    1 / sorted(t[k])[len(t[k]) // 2],
                    median_ratio(t["reference"], t[k]),
                ]
            )
    print(machine())
    print(f"{args.rounds} interleaved rounds x {args.steps} full-batch steps (median steps/s)")
    print(table(["task", "loop", "reference steps/s", "ours steps/s", "speedup (>=1.5)"], rows))


if __name__ == "__main__":
    main()
