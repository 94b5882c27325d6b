"""Table 1, the quadratic speedup: steps to relative error ε vs weight decay λ, per method.

Overparameterized linear regression (groktimizer.theory.LinearRegressionProblem). Counts for the
linear methods (gd, heavy_ball, cdm, nesterov) come from the exact per-mode closed form and are
cross-checked against explicit step-by-step torch runs; AdamW is iterated explicitly up to a cap.

    python scripts/table1.py --scale full            # the committed table (about a minute on CPU)
    python scripts/table1.py --scale smoke --out /tmp/t1

Writes table1.md, table1.csv and table1.png under --out (default outputs/results/table1).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    from groktimizer.theory import METHODS, LinearRegressionProblem, speedup_table
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))
    from groktimizer.theory import METHODS, LinearRegressionProblem, speedup_table

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

SCALES = {
    # smoke: seconds; what a test can afford
    "smoke": dict(n=20, d=200, lams=(1e-2, 1e-3), adamw_steps=2_000, explicit_lams=(1e-2,)),
    # full: the paper's setting (n=50, d=500, four decades of λ)
    "full": dict(
        n=50, d=500, lams=(1e-2, 1e-3, 1e-4, 1e-5), adamw_steps=50_000, explicit_lams=(1e-2, 1e-3)
    ),
}
# DESIGN.md §1, "checked numerically" (same set-up family: n=50, d=500, large init, η=1/(h_max+λ))
REFERENCE = {
    "gd": (11_451, 114_479, 1_144_753, 11_447_495),
    "cdm": (370, 1_181, 3_745, 11_852),
}
EXPLICIT_MAX = 200_000  # longest explicit cross-check run (steps)


def provenance(argv: list[str]) -> dict[str, str]:
    """Command, date, git commit and hardware (the project's one provenance helper)."""
    from groktimizer.experiment import runio

    prov = runio.provenance([os.path.relpath(argv[0], ROOT), *argv[1:]])
    prov["hardware"] += f"; numpy {np.__version__}"
    return prov


def cross_checks(problem: LinearRegressionProblem, table, explicit_lams, eps: float) -> list[dict]:
    """Closed-form step counts vs explicit runs (hand loop and torch.optim.SGD)."""
    out = []
    for row in table.rows:
        if row.method == "adamw" or not row.reached:
            continue
        if row.lam not in explicit_lams and row.method != "cdm":
            continue
        if row.steps + 2 > EXPLICIT_MAX:
            continue
        t0 = time.perf_counter()
        manual, w_manual = problem.explicit_run(row.method, row.lam, row.steps + 2, "manual")
        sgd, w_sgd = problem.explicit_run(row.method, row.lam, row.steps + 2, "torch")
        cf = problem.relative_error_at(row.method, row.lam, [row.steps // 2, row.steps])
        out.append(
            {
                "method": row.method,
                "lam": row.lam,
                "closed_form": row.steps,
                "explicit": int(np.flatnonzero(manual <= eps)[0]),
                "torch_sgd": int(np.flatnonzero(sgd <= eps)[0]),
                "max_err_diff_closed_vs_explicit": float(
                    np.abs(cf - manual[[row.steps // 2, row.steps]]).max()
                ),
                "max_w_diff_explicit_vs_sgd": float(np.abs(w_manual - w_sgd).max()),
                "seconds": time.perf_counter() - t0,
            }
        )
    return out


def fmt_steps(row) -> str:
    if row.reached:
        return f"{row.steps:,}"
    return f"not reached by {row.max_steps:,} (min err {row.min_rel_error or row.rel_error:.2g})"


def write_csv(path: Path, table, checks) -> None:
    by_key = {(c["method"], c["lam"]): c for c in checks}
    fields = [
        "method",
        "lam",
        "lr",
        "momentum",
        "eps",
        "steps",
        "reached",
        "max_steps",
        "rel_error",
        "min_rel_error",
        "dist_min_norm",
        "slope",
        "explicit_steps",
        "torch_sgd_steps",
    ]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in table.rows:
            c = by_key.get((r.method, r.lam), {})
            d = r.as_dict()
            w.writerow(
                {
                    **{k: d[k] for k in fields if k in d},
                    "steps": "" if r.steps is None else r.steps,
                    "min_rel_error": "" if r.min_rel_error is None else r.min_rel_error,
                    "slope": table.slopes[r.method],
                    "explicit_steps": c.get("explicit", ""),
                    "torch_sgd_steps": c.get("torch_sgd", ""),
                }
            )


def write_png(path: Path, table, problem: LinearRegressionProblem, eps: float) -> None:
    lams = sorted({r.lam for r in table.rows})
    fig, ax = plt.subplots(figsize=(8.4, 4.8))
    styles = {
        "gd": ("C0", "o"),
        "heavy_ball": ("C1", "s"),
        "cdm": ("C3", "D"),
        "nesterov": ("C2", "^"),
        "adamw": ("C4", "v"),
    }
    for m in dict.fromkeys(r.method for r in table.rows):
        rows = [r for r in table.rows if r.method == m]
        color, marker = styles.get(m, ("k", "x"))
        ok = [r for r in rows if r.reached]
        slope = table.slopes[m]
        label = m + ("" if math.isnan(slope) else f" (slope {slope:.2f})")
        if ok:
            ax.plot([r.lam for r in ok], [r.steps for r in ok], marker=marker, color=color,
                    label=label)  # fmt: skip
        miss = [r for r in rows if not r.reached]
        if miss:
            ax.scatter([r.lam for r in miss], [r.max_steps for r in miss], marker=marker,
                       facecolors="none", edgecolors=color, s=60,
                       label=None if ok else f"{m}: not reached by cap (hollow)")  # fmt: skip
    x = np.logspace(math.log10(min(lams)), math.log10(max(lams)), 50)
    eta = np.array([problem.lr(v) for v in x])
    ln = math.log(1 / eps)
    ax.plot(x, ln / (eta * x), "k--", lw=1, label=r"$\ln(1/\varepsilon)/(\eta\lambda)$")
    sqrt_label = r"$\ln(1/\varepsilon)/\sqrt{\eta\lambda}$"
    ax.plot(x, ln / np.sqrt(eta * x), "k:", lw=1.2, label=sqrt_label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel(r"weight decay $\lambda$")
    ax.set_ylabel(rf"steps to relative error $\varepsilon={eps:g}$")
    ax.set_title(f"Quadratic speedup: linear regression n={problem.n}, d={problem.d}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_md(path: Path, prov, table, checks, problem, scale: str, eps: float, secs) -> None:
    lams = sorted({r.lam for r in table.rows}, reverse=True)
    methods = list(dict.fromkeys(r.method for r in table.rows))
    get = {(r.method, r.lam): r for r in table.rows}
    L = [
        "# Table 1: quadratic speedup (steps to relative error vs weight decay)",
        "",
        f"- command: `{prov['command']}`",
        f"- date: {prov['date']}; git: {prov['git']}; wall time {secs:.0f} s",
        f"- hardware: {prov['hardware']}",
        f"- scale: {scale}; problem: n={problem.n}, d={problem.d}, seed={problem.seed}, "
        f"X entries N(0,1), w_teacher ~ N(0, I/d), w_0 = {problem.init_scale:g}·N(0, I/d); "
        f"loss ‖Xw − y‖²/(2n); h_max = {problem.h_max:.4f}, smallest nonzero h = "
        f"{problem.h[-1]:.4f}",
        f"- target w_λ = Xᵀ(XXᵀ + nλI)⁻¹y; relative error ‖w_k − w_λ‖/‖w_0 − w_λ‖ ≤ ε = {eps:g}; "
        "step η = 1/(h_max + λ) for every method; heavy_ball β = 0.9, cdm β = (1 − √(ηλ))², "
        "nesterov β_N = (1 − √(ηλ))/(1 + √(ηλ)); adamw = torch.optim.AdamW(lr=η, "
        "weight_decay=λ), iterated explicitly up to a cap.",
        "",
        "| method | " + " | ".join(f"λ = {v:g}" for v in lams) + " | log-log slope |",
        "|---|" + "---|" * (len(lams) + 1),
    ]
    for m in methods:
        s = table.slopes[m]
        cells = [fmt_steps(get[(m, v)]) for v in lams]
        L.append(f"| {m} | " + " | ".join(cells) + f" | {'—' if math.isnan(s) else f'{s:.3f}'} |")
    L += ["", "Step sizes and momenta:", ""]
    L.append("| λ | η | √(ηλ) | β cdm | β_N nesterov | ‖w_λ − pinv(X)y‖/‖pinv(X)y‖ |")
    L.append("|---|---|---|---|---|---|")
    for v in lams:
        eta = problem.lr(v)
        L.append(
            f"| {v:g} | {eta:.6f} | {math.sqrt(eta * v):.3e} | {problem.momentum('cdm', v):.8f} | "
            f"{problem.momentum('nesterov', v):.8f} | "
            f"{problem._dist_min_norm(problem.ridge_solution(v)):.3e} |"
        )
    if "gd" in methods and "cdm" in methods:
        gd = [get[("gd", v)].steps for v in lams]
        cdm = [get[("cdm", v)].steps for v in lams]
        if all(gd) and all(cdm):
            ratios = [g / c for g, c in zip(gd, cdm, strict=True)]
            L += [
                "",
                "GD/CDM step ratio: "
                + ", ".join(f"{r:.1f}" for r in ratios)
                + "; growth per decade of λ: "
                + ", ".join(f"{b / a:.3f}" for a, b in zip(ratios, ratios[1:], strict=False))
                + f" (1/√(ηλ) predicts √10 = {math.sqrt(10):.3f}).",
            ]
    adamw = [r for r in table.rows if r.method == "adamw"]
    if adamw:
        L += ["", "AdamW (decoupled decay) in detail:", ""]
        L.append(
            "| λ | reached | min rel err (step) | rel err at cap | ‖w − pinv(X)y‖/‖pinv(X)y‖ "
            "at cap | train loss at cap | ln(1/ε)/(ηλ) (decay horizon) |"
        )
        L.append("|---|---|---|---|---|---|---|")
        for r in adamw:
            x = r.extra
            L.append(
                f"| {r.lam:g} | {r.reached} | {r.min_rel_error:.3g} ({x['argmin_step']:,}) | "
                f"{r.rel_error:.3g} | {r.dist_min_norm:.3g} | {x['final_train_loss']:.2e} | "
                f"{x['decoupled_decay_steps']:,.0f} |"
            )
    if checks:
        L += [
            "",
            "Cross-checks: closed form vs explicit iteration (hand loop `buf ← β·buf + g`, "
            "`w ← w − η·buf`) vs `torch.optim.SGD(lr=η, momentum=β, dampening=0, weight_decay=λ"
            "[, nesterov=True])`:",
            "",
            "| method | λ | closed form | explicit | torch SGD | max Δ rel err | max Δw (SGD) |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in checks:
            L.append(
                f"| {c['method']} | {c['lam']:g} | {c['closed_form']:,} | {c['explicit']:,} | "
                f"{c['torch_sgd']:,} | {c['max_err_diff_closed_vs_explicit']:.1e} | "
                f"{c['max_w_diff_explicit_vs_sgd']:.1e} |"
            )
    if scale == "full":
        L += ["", "Against the reference figures quoted in DESIGN.md §1:", ""]
        L.append("| method | " + " | ".join(f"λ = {v:g}" for v in lams) + " |")
        L.append("|---|" + "---|" * len(lams))
        for m, ref in REFERENCE.items():
            if m in methods:
                ours = [get[(m, v)].steps for v in lams]
                L.append(
                    f"| {m}: ours / reference | "
                    + " | ".join(f"{o:,} / {r:,}" for o, r in zip(ours, ref, strict=True))
                    + " |"
                )
    path.write_text("\n".join(L) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "results" / "table1")
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adamw-steps", type=int, default=None, help="AdamW cap (default by scale)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = ap.parse_args(argv[1:])
    cfg = SCALES[args.scale]
    t0 = time.perf_counter()
    torch.set_flush_denormal(True)  # AdamW's second moment underflows once the fit is exact

    problem = LinearRegressionProblem(n=cfg["n"], d=cfg["d"], seed=args.seed)
    table = speedup_table(
        cfg["lams"],
        methods=args.methods,
        eps=args.eps,
        problem=problem,
        adamw_steps=args.adamw_steps or cfg["adamw_steps"],
    )
    checks = cross_checks(problem, table, cfg["explicit_lams"], args.eps)
    bad = [c for c in checks if not c["closed_form"] == c["explicit"] == c["torch_sgd"]]
    secs = time.perf_counter() - t0

    args.out.mkdir(parents=True, exist_ok=True)
    prov = provenance(argv)
    write_csv(args.out / "table1.csv", table, checks)
    write_png(args.out / "table1.png", table, problem, args.eps)
    write_md(args.out / "table1.md", prov, table, checks, problem, args.scale, args.eps, secs)
    for m, s in table.slopes.items():
        steps = ", ".join(fmt_steps(r) for r in table.rows if r.method == m)
        print(f"{m:>10}: {steps}; slope {s:.3f}")
    print(f"wrote {args.out}/table1.{{md,csv,png}} in {secs:.1f} s")
    if bad:
        print(f"CROSS-CHECK MISMATCH: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
