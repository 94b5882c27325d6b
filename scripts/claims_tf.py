"""The law and plain CDM's grid on the 1-layer transformer, from the pipeline's multirun results.

    python scripts/claims_tf.py   # outputs/multiruns/claims_tf_{law,cdm} -> results/claims/tf_law

Every run is one ``results.json`` of a ``train.py -m`` job (commands in the written files). A run
is *reached* (99% validation within the budget), *diverged* (non-finite or exploding loss),
*collapsed* (interpolated, then ended below 90% train accuracy) or *not reached*. Steps are
phase-2 steps, ``t_gen99 − t_switch``. Slopes of log steps on log ηλ are fitted on reached runs
(pairs bootstrap, ``claims_analysis.bootstrap_slope``); every failure is counted in the tables.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from groktimizer.analysis.tables import collapsed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims_analysis import _fmt, _write_csv, bootstrap_slope  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (ROOT / "outputs/multiruns/claims_tf_law", ROOT / "outputs/multiruns/claims_tf_cdm")
OUT = ROOT / "outputs/results/claims/tf_law"
COMMANDS = """\
    C='+experiment=robustness +setting=add97_tf1 trainer.threads=1 trainer.plots=false'
    # the Adam-metric law (default phase 2, eta fixed at its automatic value 1.867e-4)
    python train.py -m $C method=groktimizer optimizer.lr=1.867e-4 trainer.max_steps=2000 \\
        experiment_name=claims_tf_law trainer.seeds=[0] optimizer.weight_decay=0.5,1.5,5,15 \\
        hydra.sweep.dir=outputs/multiruns/claims_tf_law/cdm      # and [1,2] into cdm_s12
    python train.py -m ... optimizer.weight_decay=5,15 +optimizer.momentum=0.0 \\
        hydra.sweep.dir=outputs/multiruns/claims_tf_law/beta0    # and [1,2] into beta0_s12
    # plain CDM (raw gradients): the grid, seed 0 then seeds 1-2, and the library's lr=auto
    D=outputs/multiruns/claims_tf_cdm; G="$C method=groktimizer_cdm trainer.max_steps=1500 \\
        experiment_name=claims_tf_cdm"
    python train.py -m $G trainer.seeds=[0] optimizer.lr=0.01 optimizer.weight_decay=1e-3,1e-2 \\
        optimizer.damping=0.5,1.0 hydra.sweep.dir=$D/grid_s0_lr0.01    # also lr 0.03, 0.1
    python train.py -m $G trainer.seeds=[1,2] optimizer.lr=0.03 optimizer.weight_decay=1e-3 \\
        optimizer.damping=0.5,1.0 hydra.sweep.dir=$D/grid_s12_lr0.03_wd1e-3   # and the other
                                                          # (lr 0.01, 0.03) x (wd 1e-3, 1e-2) cells
    python train.py -m $G trainer.seeds=[0] optimizer.lr=0.03 optimizer.weight_decay=3e-4,3e-3 \\
        optimizer.damping=1.0 hydra.sweep.dir=$D/law_s0_lr0.03
    python train.py -m $G trainer.seeds=[0] optimizer.lr=0.03 optimizer.weight_decay=1e-3 \\
        +optimizer.momentum=0.0 hydra.sweep.dir=$D/beta0_s0_lr0.03
    python train.py -m $G trainer.seeds=[0,1] optimizer.lr=auto optimizer.weight_decay=auto \\
        hydra.sweep.dir=$D/auto_s01                              # and [2] into auto_s2
    python scripts/claims_tf.py
"""


OUTCOMES = ("reached", "diverged", "collapsed", "not reached")


def outcome(r: dict) -> str:
    if r.get("t_gen99") is not None:
        return "reached"
    if r.get("status") == "diverged":
        return "diverged"
    if collapsed(r):
        return "collapsed"
    return "not reached"


def record(r: dict) -> dict:
    """One run as the fields the tables need (η and λ as set at the switch for ``auto``)."""
    opt = r["config"]["optimizer"]
    auto = next((e.get("auto_lr") for e in r.get("events", []) if e.get("event") == "switch"), None)
    lr, wd = opt["lr"], opt["weight_decay"]
    is_auto = lr == "auto"
    if is_auto:
        lr, wd = auto["lr"], auto["weight_decay"]
    metric = "Adam-l2" if opt["_target_"].endswith("AdamCDML2") else "raw"
    beta0 = opt.get("momentum") == 0.0
    family = f"{metric} {'beta=0' if beta0 else 'CDM zeta=' + format(opt['damping'], 'g')}"
    t_sw, t99 = r.get("t_switch"), r.get("t_gen99")
    return {
        "family": family + (" auto" if is_auto else ""),
        "eta": float(lr),
        "lam": float(wd),
        "eta_lam": float(lr) * float(wd),
        "seed": int(r["seed"]),
        "outcome": outcome(r),
        "k99": None if t99 is None or t_sw is None else int(t99) - int(t_sw),
        "t_switch": t_sw,
        "steps": int(r["steps"]),
        "final_norm": r.get("final_weight_norm"),
        "commit": r["code"]["git_commit"][:12],
    }


def load(sources=SOURCES) -> list[dict]:
    paths = [p for src in sources for p in sorted(Path(src).glob("**/results.json"))]
    found = [json.loads(p.read_text()) for p in paths]
    return [record(r) for r in found if r.get("status") not in ("running", "interrupted")]


def cells(runs: list[dict]) -> list[dict]:
    """One row per (family, η, λ): counts of every outcome and the median phase-2 steps where
    every seed reached (else the reached seeds' steps are listed, the median left out)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        key = (r["family"], r["eta"], r["lam"]) if "auto" not in r["family"] else (r["family"],)
        groups[key].append(r)
    rows = []
    for key, rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1:])):
        rs = sorted(rs, key=lambda r: r["seed"])
        counts = {o: sum(r["outcome"] == o for r in rs) for o in OUTCOMES}
        ks = [r["k99"] for r in rs if r["k99"] is not None]
        rows.append(
            {
                "family": key[0],
                "eta": rs[0]["eta"] if len(key) > 1 else None,
                "lam": rs[0]["lam"] if len(key) > 1 else None,
                "eta_lam": rs[0]["eta_lam"] if len(key) > 1 else None,
                "runs": len(rs),
                **counts,
                "median_k99": float(np.median(ks)) if len(ks) == len(rs) else None,
                "per_seed": " / ".join(
                    str(r["k99"]) if r["k99"] is not None else f"{r['outcome']} (s{r['seed']})"
                    for r in rs
                ),
                "most_steps_run": max(r["steps"] for r in rs),
            }
        )
    return rows


def fits(runs: list[dict]) -> list[dict]:
    """Slope of log phase-2 steps on log ηλ on reached runs: per family (pooled over η), and
    per (family, η) where one η has reached runs at ≥ 3 values of λ and the family has more η."""
    groups: list[tuple[str, float | None]] = []
    for fam in sorted({r["family"] for r in runs if "auto" not in r["family"]}):
        groups.append((fam, None))
        etas = sorted({r["eta"] for r in runs if r["family"] == fam})
        for eta in etas if len(etas) > 1 else []:
            lams = {
                r["lam"]
                for r in runs
                if (r["family"], r["eta"]) == (fam, eta) and r["k99"] is not None
            }
            if len(lams) >= 3:
                groups.append((fam, eta))
    out = []
    for fam, eta in groups:
        rs = [r for r in runs if r["family"] == fam and eta in (None, r["eta"])]
        ok = [r for r in rs if r["k99"] is not None]
        xs = sorted({r["eta_lam"] for r in ok})
        row = {"family": fam, "eta": "pooled" if eta is None else eta, "runs": len(rs)}
        row.update(reached=len(ok), eta_lam_range=None, slope=None, ci95=None)
        if len(xs) >= 2:
            slope, (lo, hi) = bootstrap_slope([r["eta_lam"] for r in ok], [r["k99"] for r in ok])
            row.update(
                eta_lam_range=f"{xs[0]:.2g} .. {xs[-1]:.2g}",
                slope=round(slope, 3),
                ci95=f"[{lo:.2f}, {hi:.2f}]",
            )
        out.append(row)
    return out


def _table(rows: list[dict]) -> list[str]:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt(r[h]) for h in head) + " |" for r in rows]
    return lines


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for fam in sorted({r["family"] for r in runs if "auto" not in r["family"]}):
        ok = [r for r in runs if r["family"] == fam and r["k99"] is not None]
        if ok:
            ax.scatter([r["eta_lam"] for r in ok], [r["k99"] for r in ok], label=fam, s=18)
    x = np.array([1e-5, 1e-2])
    for p, ls in ((-0.5, "--"), (-1.0, ":")):
        ax.plot(x, 300 * (x / 1e-3) ** p, "k" + ls, lw=0.8, label=f"slope {p:g}")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="ηλ (Adam-l2: λ in units of the metric scale)",
        ylabel="phase-2 steps to 99% val",
        title="1-layer transformer, a+b mod 97 (reached runs)",
        ylim=(50, 3000),
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    runs = load()
    if not runs:
        raise SystemExit(f"claims_tf: no results.json under {', '.join(map(str, SOURCES))}")
    OUT.mkdir(parents=True, exist_ok=True)
    grid, fit = cells(runs), fits(runs)
    _write_csv(
        OUT / "tf_runs.csv",
        sorted(runs, key=lambda r: (r["family"], r["eta"], r["lam"], r["seed"])),
    )
    _write_csv(OUT / "tf_cells.csv", grid)
    _write_csv(OUT / "tf_fits.csv", fit)
    plot(runs, OUT / "tf_fits.png")
    commits = sorted({r["commit"] for r in runs})
    counts = {o: sum(r["outcome"] == o for r in runs) for o in OUTCOMES}
    lines = [
        "# The law and plain CDM on the 1-layer transformer (a+b mod 97, 40% train, full batch)",
        "",
        f"{len(runs)} runs ({', '.join(f'{v} {k}' for k, v in counts.items())}); git "
        f"{', '.join(commits)}; shared 2-core CPU, torch 2.13.0+cpu, one thread per run. "
        "Steps are phase-2 steps (t_gen99 − t_switch; the switch is at step 140/150/140 for "
        "seeds 0/1/2). Adam-l2 = the default phase 2 (AdamCDML2, η 1.867e-4, λ in units of "
        "the metric scale s); raw = the paper's CDM on raw gradients. `auto`: the library's "
        "lr='auto' (η, λ as set at the switch, median shown). A cell's median is given only "
        "where every seed reached.",
        "",
        "## Cells",
        "",
        *_table(grid),
        "",
        "## Log-log slopes of phase-2 steps on ηλ (reached runs, 95% pairs bootstrap)",
        "",
        *_table(fit),
        "",
        "Every run: `tf_runs.csv`. Figure: `tf_fits.png`. Commands:",
        "",
        COMMANDS,
    ]
    (OUT / "tf_claims.md").write_text("\n".join(lines))
    print("\n".join(lines[:-2]))


if __name__ == "__main__":
    main()
