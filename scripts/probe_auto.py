"""Probe the knob-free phase 2 (issue 13) in a plain loop, as a user of the library would run it.

Settings (data and models from groktimizer.experiment, the loop here):
  mlp_add      a+b mod 97, 40% train, default MLP, full batch, cross-entropy
  tf1_add      a+b mod 97, 40% train, 1-layer transformer (no LayerNorm), full batch
  tf2ln_mul    x*y mod 97, 50% train, 2-layer transformer with LayerNorm, minibatch 512,
               phase-1 Adam with a 10-step linear warm-up
  digits       digits, 1,000 train, MLP 2x200 init x8, MSE, minibatch 200 (test accuracy at budget)
Methods:
  auto         GROKtimizer(model.parameters()): the library default, no phase-2 arguments
  old_default  AdamW(wd 0) -> AdamCDM(lr 2e-4, weight_decay 5) (the previous default)
  adamw1       AdamW lr 1e-3, wd 1.0, betas (0.9, 0.98), one phase
  cdm_auto     AdamW(wd 0) -> plain CDM, automatic step size (lr='auto', weight_decay='auto')
  auto_rho     auto with RhoSwitch(1.0, patience 3, weight_decay 5) instead of the accuracy switch
Every biphasic method but auto_rho switches on AccuracySwitch(0.999, patience=3) (the default)
over evaluations every 10 steps.

  python scripts/probe_auto.py --settings mlp_add --methods auto adamw1 --seeds 0 1 \
      --out outputs/results/autotune/probe.jsonl

One JSON line per run: t_interp, t_switch, t_gen99 (first eval with val acc >= 0.99), final and
extreme accuracies, collapsed / diverged flags, events, wall time and curvature-probe cost.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

import groktimizer
from groktimizer import AccuracySwitch, AdamCDM, GROKtimizer, observe, phase_of
from groktimizer.experiment import data as gdata
from groktimizer.experiment import models as gmodels

SETTINGS = {
    "mlp_add": dict(budget=3000, batch=None, loss="ce", warmup=0, phase1="adamw"),
    "tf1_add": dict(budget=3000, batch=None, loss="ce", warmup=0, phase1="adamw"),
    "tf2ln_mul": dict(budget=4000, batch=512, loss="ce", warmup=10, phase1="adam"),
    "digits": dict(budget=6000, batch=200, loss="mse", warmup=0, phase1="adamw"),
}


def build(setting: str, seed: int):
    torch.manual_seed(seed)
    if setting == "mlp_add":
        d = gdata.modular_arithmetic("add", 97, 0.4, seed=seed)
        m = gmodels.MLP(d)
    elif setting == "tf1_add":
        d = gdata.modular_arithmetic("add", 97, 0.4, seed=seed)
        m = gmodels.Transformer(d, n_layers=1)
    elif setting == "tf2ln_mul":
        d = gdata.modular_arithmetic("mul", 97, 0.5, seed=seed)
        m = gmodels.Transformer(d, n_layers=2, layer_norm=True)
    elif setting == "digits":
        d = gdata.digits(n_train=1000, seed=seed)
        m = gmodels.MLP(d, depth=2, width=200, init_scale=8.0)
    else:
        raise ValueError(setting)
    return d, m


def loss_fn(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "ce":
        return F.cross_entropy(out, y)
    return F.mse_loss(out, F.one_hot(y, out.shape[-1]).to(out.dtype))


def phase1_factory(kind: str):
    cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    kw = {} if kind == "adam" else {"weight_decay": 0.0}
    return functools.partial(cls, lr=1e-3, betas=(0.9, 0.98), **kw)


def make_optimizer(method: str, model, cfg):
    params = list(model.parameters())
    switch = AccuracySwitch(0.999, patience=3)
    p1 = phase1_factory(cfg["phase1"])
    if method == "auto":
        return GROKtimizer(params, phase1=p1)
    if method == "auto_rho":  # the automatic switch: rho = |grad| / (lambda |w|) < 1, lambda 5
        return GROKtimizer(
            params, phase1=p1, switch=groktimizer.RhoSwitch(1.0, patience=3, weight_decay=5.0)
        )
    if method == "old_default":
        return GROKtimizer(
            params,
            phase1=p1,
            phase2=functools.partial(AdamCDM, lr=2e-4, weight_decay=5.0),
            switch=switch,
        )
    if method == "cdm_auto":
        return GROKtimizer(
            params, phase1=p1, phase2=groktimizer.CDM, lr="auto", weight_decay="auto", switch=switch
        )
    if method == "adamw1":
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
    raise ValueError(method)


@torch.no_grad()
def metrics(model, d, kind):
    model.eval()
    row = {}
    for split, x, y in (("train", d.x_train, d.y_train), ("val", d.x_val, d.y_val)):
        out = model(x)
        row[f"{split}_loss"] = float(loss_fn(kind, out, y))
        row[f"{split}_acc"] = float((out.argmax(-1) == y).float().mean())
    model.train()
    row["weight_norm"] = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))
    return row


def probe_bound(opt2, closure):
    from groktimizer.autotune import stability_bound
    from groktimizer.curvature import top_eigenpair

    params = [p for g in opt2.param_groups for p in g["params"]]
    h, _, n = top_eigenpair(closure, params, iters=20, scale=opt2.preconditioner())
    g = opt2.param_groups[0]
    beta = opt2.group_momentum(g)
    frac = g["lr"] * (h + g["weight_decay"]) / stability_bound(beta)
    return {
        "h_pre": h,
        "lr": g["lr"],
        "weight_decay": g["weight_decay"],
        "beta": beta,
        "fraction_of_bound": frac,
        "hvps": n,
    }


def run(setting, method, seed, eval_every=10, budget=None, after=0):
    cfg = SETTINGS[setting]
    d, model = build(setting, seed)
    budget = budget or cfg["budget"]
    opt = make_optimizer(method, model, cfg)
    sched = None
    if cfg["warmup"]:
        target = opt.phase1 if isinstance(opt, GROKtimizer) else opt
        w = cfg["warmup"]
        sched = torch.optim.lr_scheduler.LambdaLR(target, lambda s: min(1.0, (s + 1) / w))
    gen = torch.Generator().manual_seed(1000 + seed)
    kind = cfg["loss"]

    def closure():
        return loss_fn(kind, model(d.x_train), d.y_train)

    rec = {
        "setting": setting,
        "method": method,
        "seed": seed,
        "budget": budget,
        "t_interp": None,
        "t_switch": None,
        "t_gen99": None,
        "t_gen95": None,
        "diverged": False,
        "events": [],
        "log": [],
    }
    max_train_after_switch, min_train_after_switch = 0.0, 1.0
    t0 = time.time()
    for step in range(1, budget + 1):
        if cfg["batch"] is None:
            x, y = d.x_train, d.y_train
        else:
            idx = torch.randint(0, d.n_train, (cfg["batch"],), generator=gen)
            x, y = d.x_train[idx], d.y_train[idx]
        opt.zero_grad(set_to_none=True)
        loss_fn(kind, model(x), y).backward()
        opt.step()
        if sched is not None and (phase_of(opt) in (None, 1)):
            sched.step()
        if step % eval_every and step != budget:
            continue
        row = metrics(model, d, kind)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        gn = float(torch.sqrt(sum((g**2).sum() for g in grads))) if grads else None
        events = observe(
            opt,
            step,
            train_acc=row["train_acc"],
            train_loss=row["train_loss"],
            grad_norm=gn,
            weight_norm=row["weight_norm"],
            closure=closure,
        )
        for e in events:
            e = {
                k: v
                for k, v in e.items()
                if isinstance(v, (int, float, str, bool, dict, type(None)))
            }
            rec["events"].append(e)
            if e["event"] == "switch":
                rec["t_switch"] = step
                if method == "old_default":  # where the old fixed step sits against the bound
                    rec["switch_probe"] = probe_bound(opt.phase2, closure)
        if any(e.get("weights_changed") for e in events):
            row = metrics(model, d, kind)
        row["step"] = step
        row["phase"] = phase_of(opt)
        row["lr"] = float(opt.param_groups[0]["lr"])
        row["wd"] = float(opt.param_groups[0].get("weight_decay", 0.0))
        rec["log"].append(row)
        if rec["t_interp"] is None and row["train_acc"] >= 0.999:
            rec["t_interp"] = step
        if rec["t_gen95"] is None and row["val_acc"] >= 0.95:
            rec["t_gen95"] = step
        if rec["t_gen99"] is None and row["val_acc"] >= 0.99:
            rec["t_gen99"] = step
        if setting != "digits" and rec["t_gen99"] is not None and step >= rec["t_gen99"] + after:
            break
        if rec["t_switch"] is not None:
            max_train_after_switch = max(max_train_after_switch, row["train_acc"])
            min_train_after_switch = min(min_train_after_switch, row["train_acc"])
        if not (math.isfinite(row["train_loss"]) and math.isfinite(row["weight_norm"])):
            rec["diverged"] = True
            break
    rec["wall_s"] = time.time() - t0
    last = rec["log"][-1]
    rec["final"] = {
        k: last[k]
        for k in ("step", "train_acc", "val_acc", "train_loss", "weight_norm", "lr", "wd")
    }
    rec["best_val_acc"] = max(r["val_acc"] for r in rec["log"])
    rec["min_train_acc_after_switch"] = min_train_after_switch if rec["t_switch"] else None
    # collapsed: had interpolated, and the fit was lost by the end (or never came back)
    rec["collapsed"] = bool(
        not rec["diverged"] and rec["t_interp"] is not None and last["train_acc"] < 0.9
    )
    rec["hvps"] = sum(int(e.get("hvps", 0)) for e in rec["events"])
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS))
    ap.add_argument("--methods", nargs="+", default=["auto"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--keep-log", action="store_true")
    ap.add_argument(
        "--after",
        type=int,
        default=300,
        help="steps to keep training after t_gen99 (a late collapse shows)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for setting in args.settings:
        for seed in args.seeds:
            for method in args.methods:
                rec = run(setting, method, seed, budget=args.budget, after=args.after)
                rec["command"] = " ".join(["python"] + sys.argv)
                if not args.keep_log:
                    rec["log"] = rec["log"][-3:]
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                ev = [(e["step"], e["event"]) for e in rec["events"]][:12]
                print(
                    f"{setting:10s} {method:12s} seed {seed}: switch {rec['t_switch']} "
                    f"t_gen99 {rec['t_gen99']} final tr {rec['final']['train_acc']:.3f} "
                    f"val {rec['final']['val_acc']:.3f} collapsed {rec['collapsed']} "
                    f"diverged {rec['diverged']} lr {rec['final']['lr']:.3g} "
                    f"wd {rec['final']['wd']:.3g} hvps {rec['hvps']} {rec['wall_s']:.0f}s "
                    f"events {ev} probe {rec.get('switch_probe')}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
