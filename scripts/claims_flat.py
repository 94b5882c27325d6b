"""Flat minima at matched train loss (issue 16, item 5): sharpness and norm along each method's
trajectory, compared where the methods have the same train loss, not at their final states.

a+b mod 97, 40% train, the default MLP, full batch (the claims set-up, `claims_net.build`).
Methods, each from the same initialisation per seed:
  groktimizer  GROKtimizer(model.parameters()): the library default (AdamW wd 0, then the
               knob-free AdamCDML2 phase 2 at the accuracy switch)
  adamw1       AdamW lr 1e-3, wd 1, betas (0.9, 0.98) (the README's baseline)
  adamw5       the same at wd 5 (AdamW's best weight decay on this task, tables 2 and 5)
  adam_ema     Adam lr 1e-3 betas (0.9, 0.98), coupled wd 0.005, Grokfast EMA (α 0.98, λ 2)
Every 10 steps: train loss / accuracy, validation accuracy, ‖w‖. Sharpness (top eigenvalue of
the raw training-loss Hessian, Lanczos, `groktimizer.curvature.top_eigenvalue`) at the first
evaluation with train loss ≤ each threshold in LOSS_LEVELS, at the first evaluation with val acc
≥ 99% (t_gen99), and every SHARP_EVERY steps. A run stops at t_gen99 + 300 or at its budget.

    python scripts/claims_flat.py                       # all methods x seeds 0-2 (resumable)
    python scripts/claims_flat.py --methods adamw5 --seeds 0
    python scripts/claims_flat.py --analyse             # flat.md / flat.csv from the records

One JSON line per run in outputs/results/claims/flat_runs.jsonl.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import claims_net as cn  # noqa: E402

from groktimizer import GradFilterEMA, GROKtimizer, observe  # noqa: E402
from groktimizer.curvature import top_eigenvalue  # noqa: E402
from groktimizer.filters import FilteredOptimizer  # noqa: E402

RUNS = cn.OUT / "flat_runs.jsonl"
LOSS_LEVELS = (1.0, 0.3, 0.1, 0.03, 0.01)
SHARP_EVERY = 250
SHARP_ITERS = 20
AFTER_GEN = 300
BUDGET = {"groktimizer": 1500, "adamw1": 2500, "adamw5": 2500, "adam_ema": 2500}
METHODS = tuple(BUDGET)


def make(method: str, model):
    params = list(model.parameters())
    if method == "groktimizer":
        return GROKtimizer(params)
    if method in ("adamw1", "adamw5"):
        wd = 1.0 if method == "adamw1" else 5.0
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=wd, betas=(0.9, 0.98))
    if method == "adam_ema":
        adam = torch.optim.Adam(params, lr=1e-3, weight_decay=0.005, betas=(0.9, 0.98))
        return FilteredOptimizer(adam, GradFilterEMA(alpha=0.98, lamb=2.0))
    raise ValueError(f"unknown method {method!r}; accepted: {', '.join(METHODS)}")


def run(method: str, seed: int) -> dict:
    torch.set_flush_denormal(True)
    data, model = cn.build(seed)
    opt = make(method, model)
    params = list(model.parameters())

    def closure() -> torch.Tensor:
        return F.cross_entropy(cn.logits(model, data.x_train), data.y_train)

    def sharp() -> float:
        eig, _ = top_eigenvalue(closure, params, iters=SHARP_ITERS)
        return float(eig)

    rows, probes, t_gen99, t_switch, status = [], [], None, None, "budget"
    levels = list(LOSS_LEVELS)
    t0 = time.time()
    budget = BUDGET[method]
    for step in range(budget + 1):
        out = cn.logits(model, data.x_train)
        loss = F.cross_entropy(out, data.y_train)
        lv = float(loss.detach())
        if not math.isfinite(lv):
            status = "diverged"
            break
        if step % cn.EVAL_EVERY == 0:
            acc = float((out.argmax(-1) == data.y_train).float().mean())
            va, wn = cn.val_acc(model, data), cn.wnorm(model)
            rows.append([step, lv, acc, va, wn])
            why = []
            while levels and lv <= levels[0]:
                why.append(f"loss<={levels.pop(0):g}")
            if t_gen99 is None and va >= 0.99:
                t_gen99 = step
                why.append("t_gen99")
            if step % SHARP_EVERY == 0:
                why.append("periodic")
            if why:
                probes.append(
                    dict(
                        step=step,
                        why=why,
                        loss=lv,
                        train_acc=acc,
                        val_acc=va,
                        weight_norm=wn,
                        sharpness=sharp(),
                    )
                )
            if isinstance(opt, GROKtimizer):
                for ev in observe(
                    opt, step, closure=closure, train_acc=acc, train_loss=lv, weight_norm=wn
                ):
                    if ev.get("event") == "switch":
                        t_switch = step
            if t_gen99 is not None and step >= t_gen99 + AFTER_GEN:
                status = "reached"
                break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if status == "budget" and t_gen99 is not None:
        status = "reached"
    return dict(
        method=method,
        seed=seed,
        status=status,
        budget=budget,
        t_switch=t_switch,
        t_gen99=t_gen99,
        probes=probes,
        seconds=round(time.time() - t0, 1),
        curve_cols=["step", "train_loss", "train_acc", "val_acc", "weight_norm"],
        curve=rows,
    )


def done() -> set[tuple[str, int]]:
    if not RUNS.exists():
        return set()
    return {(r["method"], r["seed"]) for r in map(json.loads, RUNS.read_text().splitlines())}


def _median(probes: list[dict], field: str) -> float | None:
    return float(np.median([p[field] for p in probes])) if probes else None


def analyse() -> None:
    runs = [json.loads(line) for line in RUNS.read_text().splitlines() if line.strip()]
    keys = [f"loss<={v:g}" for v in LOSS_LEVELS] + ["t_gen99"]
    out_rows = []
    for method in METHODS:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        for k in keys:
            hits = [next((p for p in r["probes"] if k in p["why"]), None) for r in rs]
            got = [h for h in hits if h is not None]
            out_rows.append(
                dict(
                    method=method,
                    at=k,
                    runs=len(rs),
                    reached=len(got),
                    step=_median(got, "step"),
                    loss=_median(got, "loss"),
                    sharpness=_median(got, "sharpness"),
                    weight_norm=_median(got, "weight_norm"),
                    val_acc=_median(got, "val_acc"),
                    seeds_sharpness=";".join(
                        "—" if h is None else f"{h['sharpness']:.3g}" for h in hits
                    ),
                )
            )
    with (cn.OUT / "flat.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(out_rows[0]))
        w.writeheader()
        w.writerows(out_rows)

    def fmt(v, spec):
        return "—" if v is None else format(v, spec)

    hw = runs[0].get("hardware", "")
    commits = ", ".join(sorted({r.get("commit", "?") for r in runs}))
    lines = [
        "# Flat minima at matched train loss (issue 16, item 5)",
        "",
        f"Command: `python scripts/claims_flat.py` then `--analyse`. git {commits}; {hw}",
        "",
        "Sharpness = top eigenvalue of the raw training-loss Hessian (Lanczos, "
        f"{SHARP_ITERS} iterations) at the first evaluation (every 10 steps) where each run's "
        "train loss is at or below the level, and at its first evaluation with 99% validation "
        "accuracy. Medians over seeds (per-seed sharpness in the last column; — = not reached "
        "within the budget).",
        "",
        "| method | at | reached | step | train loss | sharpness | ‖w‖ | val acc | per seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out_rows:
        lines.append(
            f"| {r['method']} | {r['at']} | {r['reached']}/{r['runs']} | {fmt(r['step'], '.0f')} | "
            f"{fmt(r['loss'], '.3g')} | {fmt(r['sharpness'], '.3g')} | "
            f"{fmt(r['weight_norm'], '.1f')} | {fmt(r['val_acc'], '.3f')} | "
            f"{r['seeds_sharpness']} |"
        )
    (cn.OUT / "flat.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(runs)


def plot(runs: list[dict]) -> None:
    """Sharpness against train loss along each run (probes in step order), t_gen99 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colours = dict(zip(METHODS, ("C3", "C0", "C2", "C1"), strict=True))
    for method in METHODS:
        for i, r in enumerate(x for x in runs if x["method"] == method):
            pts = [(p["loss"], p["sharpness"]) for p in r["probes"] if p["sharpness"] > 0]
            if not pts:
                continue
            ax.plot(
                *zip(*pts, strict=True),
                "o-",
                ms=3,
                lw=1,
                alpha=0.8,
                color=colours[method],
                label=method if i == 0 else None,
            )
            gen = [p for p in r["probes"] if "t_gen99" in p["why"]]
            if gen:
                ax.plot(
                    gen[0]["loss"],
                    gen[0]["sharpness"],
                    "*",
                    ms=12,
                    color=colours[method],
                    markeredgecolor="k",
                )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="train loss",
        ylabel="top Hessian eigenvalue",
        title="a+b mod 97, MLP: sharpness along each run (★ = first 99% val)",
    )
    ax.invert_xaxis()
    ax.legend()
    fig.tight_layout()
    fig.savefig(cn.OUT / "flat.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--analyse", action="store_true")
    args = ap.parse_args(argv)
    if args.analyse:
        analyse()
        return
    torch.set_num_threads(1)
    cn.OUT.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for method in args.methods:
            if (method, seed) in done():
                continue
            res = run(method, seed)
            res.update(
                hardware=cn.hardware(),
                commit=cn.code_version(),
                date=time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                command="python scripts/claims_flat.py " + " ".join(argv or sys.argv[1:]),
            )
            cn.append_record(RUNS, res)
            print(
                f"{method} seed {seed}: {res['status']} t_gen99={res['t_gen99']} "
                f"probes={len(res['probes'])} {res['seconds']} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
