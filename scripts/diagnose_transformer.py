"""Why plain CDM diverges after the switch on the 1-layer transformer, and what stays stable.

One seed of a+b mod 97 (40% train), the 1-layer transformer (d 128, 4 heads, no LayerNorm), full
batch. Phase 1 is AdamW (lr 1e-3, wd 0, betas 0.9/0.98) until train accuracy >= 99.9% at 3
evaluations in a row (the pipeline's default switch). From that same switch state each phase-2
variant runs a few hundred steps while this script records, per step, the training loss, weight
norm and the update's alignment with the phase-2 gradient ``g + λw`` (cosine of ``-Δw`` with it,
and the restart signal ``(g+λw)·Δw > 0``), and every few steps the top Hessian eigenvalue (Lanczos
with full reorthogonalisation; its smallest Ritz value shows negative curvature) next to the
stability bound ``2(1+β)/η`` of heavy ball. For AdamCDM the relevant curvature is that of Adam's
metric, ``D^-1/2 H D^-1/2`` with ``D = sqrt(v_hat) + eps``, computed the same way.

At the switch it also compares power iteration with 20 steps (the estimate behind the issue)
against power iteration run to convergence and Lanczos.

    OMP_NUM_THREADS=1 python scripts/diagnose_transformer.py            # ~15 min on one CPU core
    python scripts/diagnose_transformer.py --quick                      # fewer steps, a smoke test

Writes outputs/results/transformer_diagnosis/{diagnosis.json, trajectories.csv, diagnosis.png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from groktimizer.adam_cdm import AdamCDM
from groktimizer.cdm import CDM, critical_momentum
from groktimizer.curvature import lanczos_top_eigenvalues, top_eigenvalue
from groktimizer.experiment.data import modular_arithmetic
from groktimizer.experiment.models import Transformer
from groktimizer.guard import Guard

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "results" / "transformer_diagnosis"


def loss_of(model, x, y):
    return F.cross_entropy(model(x), y)


def phase1(data, seed: int, cache: Path, max_steps: int = 3000):
    torch.manual_seed(seed)
    model = Transformer(data)
    adam = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, betas=(0.9, 0.98))
    if cache.exists():
        state = torch.load(cache)
        model.load_state_dict(state["model"])
        adam.load_state_dict(state["adam"])
        return model, adam, state["step"]
    held = 0
    for step in range(1, max_steps + 1):
        adam.zero_grad()
        loss_of(model, data.x_train, data.y_train).backward()
        adam.step()
        if step % 10 == 0:
            with torch.no_grad():
                acc = (model(data.x_train).argmax(-1) == data.y_train).float().mean().item()
            held = held + 1 if acc >= 0.999 else 0
            if held == 3:
                torch.save(
                    {"model": model.state_dict(), "adam": adam.state_dict(), "step": step}, cache
                )
                return model, adam, step
    raise RuntimeError(f"phase 1 did not interpolate in {max_steps} steps")


def metric_scale(opt: AdamCDM, params) -> list[torch.Tensor]:
    """S = D^-1/2, D = sqrt(v_hat) + eps: AdamCDM's steep modes see S H S."""
    out = []
    for p in params:
        st = opt.state[p]
        g = opt.param_groups[0]
        v_hat = st["exp_avg_sq"] / (1 - g["beta2"] ** st["step"])
        out.append((v_hat.sqrt() + g["eps"]).rsqrt())
    return out


def eigs(model, data, iters: int, scale=None) -> tuple[float, float]:
    """(top, bottom) Ritz values of H (or of S H S) by Lanczos with ``iters`` HVPs."""
    names = [n for n, _ in model.named_parameters()]
    base = [p.detach() for p in model.parameters()]
    if scale is None:
        params = list(model.parameters())
        fn = lambda: loss_of(model, data.x_train, data.y_train)  # noqa: E731
    else:
        params = [torch.zeros_like(p, requires_grad=True) for p in base]

        def fn():
            w = {n: b + s * u for n, b, s, u in zip(names, base, scale, params, strict=True)}
            return F.cross_entropy(functional_call(model, w, (data.x_train,)), data.y_train)

    ritz = lanczos_top_eigenvalues(fn, params, k=iters, iters=iters)
    return ritz[0], ritz[-1]


def run_variant(
    name,
    model0,
    adam0,
    data,
    kind,
    lr,
    wd,
    steps,
    eig_every,
    lanczos_iters,
    guard=None,
    reestimate_every=None,
    safety=0.5,
):
    model = Transformer(data)
    model.load_state_dict(model0.state_dict())
    params = list(model.parameters())
    if kind == "cdm":
        opt = CDM(params, lr=lr, weight_decay=wd)
    else:
        opt = AdamCDM(params, lr=lr, weight_decay=wd, beta2=0.98)
        adam = torch.optim.AdamW(params, lr=1e-3)
        adam.load_state_dict(adam0.state_dict())
        opt.init_from_adam(adam)
    stepper = Guard(opt, **guard) if guard else opt
    rows, events = [], []
    t0 = time.time()
    for t in range(steps + 1):
        stepper.zero_grad()
        loss = loss_of(model, data.x_train, data.y_train)
        loss.backward()
        lr_now = float(opt.param_groups[0]["lr"])
        beta = critical_momentum(lr_now, wd)
        row = {
            "variant": name,
            "step": t,
            "loss": loss.item(),
            "lr": lr_now,
            "weight_norm": math.sqrt(sum(float((p.detach() ** 2).sum()) for p in params)),
            "stability_bound": 2 * (1 + beta) / lr_now,
        }
        if t % 10 == 0:
            with torch.no_grad():
                out = model(data.x_train)
                row["train_acc"] = (out.argmax(-1) == data.y_train).float().mean().item()
                row["val_acc"] = (model(data.x_val).argmax(-1) == data.y_val).float().mean().item()
        if not math.isfinite(row["loss"]) or row["loss"] > 1e4:
            rows.append(row)
            break
        if t == steps:
            rows.append(row)
            break
        if eig_every and t % eig_every == 0:
            top, bottom = eigs(model, data, lanczos_iters)
            row["h_top"], row["h_bottom"] = top, bottom
            if kind == "adam_cdm":
                row["h_top_metric"], _ = eigs(model, data, lanczos_iters, metric_scale(opt, params))
        if reestimate_every and t % reestimate_every == 0:
            h = row["h_top"] if "h_top" in row else eigs(model, data, lanczos_iters)[0]
            for g in opt.param_groups:
                g["lr"] = safety / (abs(h) + wd)
        full = [p.grad + wd * p.detach() for p in params]
        before = [p.detach().clone() for p in params]
        if guard and stepper.guard_observe(t, row["loss"]):
            rows.append(row)  # rolled back: the gradient above belongs to discarded weights
            events += stepper.pop_events()
            continue
        stepper.step()
        dw = [p.detach() - b for p, b in zip(params, before, strict=True)]
        dot = sum(float((g * d).sum()) for g, d in zip(full, dw, strict=True))
        ng = math.sqrt(sum(float((g * g).sum()) for g in full))
        nd = math.sqrt(sum(float((d * d).sum()) for d in dw))
        row["g_dot_dw"] = dot
        row["cos_descent"] = -dot / (ng * nd + 1e-30)
        rows.append(row)
        if guard:
            events += stepper.pop_events()
    print(
        f"{name}: {len(rows)} rows, final loss {rows[-1]['loss']:.4g}, {time.time() - t0:.0f}s",
        flush=True,
    )
    return rows, events


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--lanczos-iters", type=int, default=12)
    ap.add_argument("--cache", default="/tmp/groktimizer_diag_switch.pt")
    ap.add_argument("--plot-only", action="store_true", help="redraw from the CSV and JSON")
    args = ap.parse_args()
    if args.plot_only:
        summary = json.loads((OUT / "diagnosis.json").read_text())
        with open(OUT / "trajectories.csv") as f:
            rows = [
                {k: (v if k == "variant" else float(v)) for k, v in r.items() if v != ""}
                for r in csv.DictReader(f)
            ]
        plot(rows, summary["at_switch"])
        return
    torch.set_flush_denormal(True)
    OUT.mkdir(parents=True, exist_ok=True)
    data = modular_arithmetic("add", 97, 0.4, "tokens", seed=args.seed)
    model, adam, t_switch = phase1(data, args.seed, Path(args.cache))
    params = list(model.parameters())
    fn = lambda: loss_of(model, data.x_train, data.y_train)  # noqa: E731
    q = 0.25 if args.quick else 1.0
    li = args.lanczos_iters

    at_switch = {"t_switch": t_switch, "train_loss": fn().item()}
    t = time.time()
    at_switch["power_20"], _ = top_eigenvalue(fn, params, iters=20, tol=1e-12)
    at_switch["power_converged"], at_switch["power_converged_iters"] = top_eigenvalue(
        fn, params, iters=100, tol=1e-3
    )
    top, bottom = eigs(model, data, 20)
    at_switch["lanczos20_top"], at_switch["lanczos20_bottom"] = top, bottom
    probe = AdamCDM(params, lr=2e-4, weight_decay=5.0)
    probe.init_from_adam(adam)
    at_switch["lanczos20_top_adam_metric"], _ = eigs(model, data, 20, metric_scale(probe, params))
    at_switch["seconds"] = time.time() - t
    print(json.dumps(at_switch), flush=True)

    variants = [
        # name, kind, lr, wd, steps, eig_every, extra
        ("cdm_lr0.1_wd1e-2", "cdm", 0.1, 1e-2, int(40 * q) or 10, 4, {}),
        ("adam_cdm_lr2e-4_wd5", "adam_cdm", 2e-4, 5.0, int(200 * q), 50, {}),
        ("cdm_lr0.01_wd1e-2", "cdm", 0.01, 1e-2, int(200 * q), 50, {}),
        (
            "cdm_lr0.1_wd1e-2_guard",
            "cdm",
            0.1,
            1e-2,
            int(150 * q),
            0,
            {"guard": {"rollback_ratio": 10.0, "loss_floor": 1e-2, "lr_factor": 0.3}},
        ),
        ("cdm_reestimated_every20", "cdm", 0.1, 1e-2, int(100 * q), 20, {"reestimate_every": 20}),
    ]
    all_rows, summary = [], {"at_switch": at_switch, "variants": {}}
    for name, kind, lr, wd, steps, ee, extra in variants:
        rows, events = run_variant(name, model, adam, data, kind, lr, wd, steps, ee, li, **extra)
        all_rows += rows
        last = rows[-1]
        accs = [r for r in rows if "train_acc" in r]
        summary["variants"][name] = {
            "steps_run": last["step"],
            "final_loss": last["loss"],
            "final_weight_norm": last["weight_norm"],
            "final_train_acc": accs[-1]["train_acc"] if accs else None,
            "final_val_acc": accs[-1]["val_acc"] if accs else None,
            "h_top": [(r["step"], r["h_top"]) for r in rows if "h_top" in r],
            "h_bottom": [(r["step"], r["h_bottom"]) for r in rows if "h_bottom" in r],
            "h_top_adam_metric": [
                (r["step"], r["h_top_metric"]) for r in rows if "h_top_metric" in r
            ],
            "stability_bound": rows[0]["stability_bound"],
            "frac_uphill_steps": sum(r.get("g_dot_dw", 0) > 0 for r in rows) / max(1, len(rows)),
            "events": events,
        }
        (OUT / "diagnosis.json").write_text(json.dumps(summary, indent=1))
    keys = sorted({k for r in all_rows for k in r}, key=lambda k: (k != "variant", k != "step", k))
    with open(OUT / "trajectories.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(all_rows)
    plot(all_rows, at_switch)


def plot(rows, at_switch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(1, 4, figsize=(20, 4.5))
    for n in names:
        rs = [r for r in rows if r["variant"] == n]
        s = [r["step"] for r in rs]
        (line,) = ax[0].semilogy(s, [r["loss"] for r in rs], label=n)
        ax[1].semilogy(s, [r["weight_norm"] for r in rs], color=line.get_color())
        e = [r for r in rs if "h_top" in r]
        if e:
            ax[2].semilogy(
                [r["step"] for r in e], [abs(r["h_top"]) for r in e], "o-", color=line.get_color()
            )
            ax[2].axhline(rs[0]["stability_bound"], ls=":", color=line.get_color())
        em = [r for r in rs if "h_top_metric" in r]
        if em:
            ax[2].semilogy(
                [r["step"] for r in em],
                [r["h_top_metric"] for r in em],
                "s--",
                color=line.get_color(),
            )
        c = [r for r in rs if "cos_descent" in r]
        ax[3].plot(
            [r["step"] for r in c], [r["cos_descent"] for r in c], color=line.get_color(), lw=0.8
        )
    ax[0].set(title="train loss after the switch", xlabel="phase-2 step")
    ax[1].set(title="weight norm", xlabel="phase-2 step")
    ax[2].set(
        title="top Hessian eigenvalue (o raw, s Adam metric);\n: = 2(1+β)/η", xlabel="phase-2 step"
    )
    ax[3].set(title="cos(-Δw, g+λw)", xlabel="phase-2 step", ylim=(-1.05, 1.05))
    ax[0].legend(fontsize=7)
    fig.suptitle(
        f"a+b mod 97, 40% train, 1-layer transformer, seed 0: switch at step "
        f"{at_switch['t_switch']}, power(20) {at_switch['power_20']:.3g}, converged "
        f"{at_switch['power_converged']:.3g}, Lanczos(20) {at_switch['lanczos20_top']:.3g}"
    )
    fig.tight_layout()
    fig.savefig(OUT / "diagnosis.png", dpi=90)


if __name__ == "__main__":
    main()
