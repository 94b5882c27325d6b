"""Fair comparisons: every method tuned on a grid of the same size and budget, the best setting
chosen on tuning seeds, then measured on fresh report seeds.

    python -m groktimizer.analysis.fair --tune outputs/multiruns/fair/full/mlp/tune \
        --report outputs/multiruns/fair/full/mlp/report --out outputs/results/fair/mlp

Selection (no leakage): for each task, model and method, every setting of its grid is scored by
the median over the *tuning* seeds of ``t_gen99`` where a run that did not reach the target
(budget used up, diverged, interrupted) counts as its budget ``max_steps``; the lowest median wins
(ties: fewer failures, then the lower mean). The report runs never enter the choice, and a report
seed that is also a tuning seed of the same method is refused.

Report: each method at its reference setting (the method's own config, no grid override) and at
its tuned setting, median [IQR] of t_interp, t_gen95, t_gen99 and wall time over the report
seeds, with failures counted; and the speedup of GROKtimizer over each baseline, the ratio of
median t_gen99 (failures at the budget) with a seed-bootstrap 95% percentile interval.

A method is named by its experiment (``+experiment=fair_adamw`` -> ``adamw``), else by its
``method=`` override, else from the resolved config (as the tables do); a setting is the run's
Hydra overrides minus the seed and the context (trainer, model, dataset, experiment, method).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from groktimizer.analysis import tables
from groktimizer.experiment import runio

TARGET = "t_gen99"
METRICS = ("t_interp", "t_gen95", "t_gen99", "wall_time_s")
# keys that say where a run is, not how the method is set
CONTEXT_KEYS = ("trainer", "model", "dataset", "experiment", "method", "seed")
EXPERIMENT_PREFIX = "fair_"
BASELINE_FILTERS = ("adam_ema", "adam_ma")
N_BOOT = 10_000
RNG_SEED = 0

Setting = tuple[tuple[str, str], ...]
Cell = tuple[str, str, str]  # (task, model, method)


# --------------------------------------------------------------------------- labels
def _overrides(run: dict[str, Any]) -> dict[str, str]:
    return dict(tables.parse_override(o) for o in run.get("overrides") or [])


def method_of(run: dict[str, Any]) -> str:
    ov = _overrides(run)
    exp = ov.get("experiment", "")
    if exp.startswith(EXPERIMENT_PREFIX):
        return exp[len(EXPERIMENT_PREFIX) :]
    return ov.get("method") or tables.method_label(run)


def model_of(run: dict[str, Any]) -> str:
    return str(tables._cfg(run, "model._target_", "?")).rsplit(".", 1)[-1].lower()


def cell_of(run: dict[str, Any]) -> Cell:
    return (tables.task_label(run), model_of(run), method_of(run))


def setting_of(run: dict[str, Any]) -> Setting:
    """The run's overrides that set the method (its grid point); () for the reference."""
    return tuple(
        (k, v)
        for k, v in tables.group_key(run)
        if k.split(".")[0].split("/")[0] not in CONTEXT_KEYS
    )


def setting_text(setting: Setting) -> str:
    return " ".join(f"{k}={v}" for k, v in setting) or "(reference)"


def raw_overrides(run: dict[str, Any], setting: Setting) -> list[str]:
    """The override strings as typed (``+key=...`` kept) for the keys of `setting`."""
    keys = {k for k, _ in setting}
    return [o for o in run.get("overrides") or [] if tables.parse_override(o)[0] in keys]


def _same_value(cfg_value: Any, text: str) -> bool:
    if isinstance(cfg_value, (dict, list)):
        return False
    try:
        a, b = float(cfg_value), float(text)
        return a == b or math.isclose(a, b, rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(cfg_value).lower() == text.strip("'\"").lower()


def matches(run: dict[str, Any], setting: Setting) -> bool:
    """Whether the run's resolved config has the values of `setting` (3 == 3.0; the reference
    run matches a tuned setting that happens to equal the method's defaults)."""
    if setting_of(run) == setting:
        return True
    return all(_same_value(tables._cfg(run, k), v) for k, v in setting)


# --------------------------------------------------------------------------- scoring
def at_budget(run: dict[str, Any], metric: str = TARGET) -> tuple[float, bool]:
    """(steps to `metric`, failed): a run that never got there counts as its budget."""
    v = tables._number(run.get(metric))
    if v is not None and math.isfinite(v):
        return v, False
    budget = tables._number(run.get("max_steps"))
    if budget is None:
        raise ValueError(f"{run.get('_path', 'a run')}: no {metric} and no max_steps (budget)")
    return budget, True


@dataclass
class Candidate:
    """One setting of one method on one task and model, scored on the runs given."""

    cell: Cell
    setting: Setting
    runs: list[dict[str, Any]]
    values: list[float] = field(init=False)
    failures: int = field(init=False)

    def __post_init__(self) -> None:
        self.runs = sorted(self.runs, key=lambda r: (r.get("seed") is None, r.get("seed")))
        scored = [at_budget(r) for r in self.runs]
        self.values = [v for v, _ in scored]
        self.failures = sum(f for _, f in scored)

    @property
    def seeds(self) -> list[Any]:
        return [r.get("seed") for r in self.runs]

    @property
    def median(self) -> float:
        return float(np.median(self.values))

    @property
    def rank(self) -> tuple:
        return (self.median, self.failures, float(np.mean(self.values)), setting_text(self.setting))

    @property
    def overrides(self) -> list[str]:
        return raw_overrides(self.runs[0], self.setting)


def candidates(runs: Sequence[dict[str, Any]]) -> dict[Cell, list[Candidate]]:
    """Runs grouped by (task, model, method) and setting; a seed twice in one group, or one
    setting run under two different contexts (e.g. two budgets), is refused."""
    by: dict[tuple[Cell, Setting], list[dict[str, Any]]] = {}
    keys: dict[tuple[Cell, Setting], set] = {}
    for run in runs:
        k = (cell_of(run), setting_of(run))
        by.setdefault(k, []).append(run)
        keys.setdefault(k, set()).add(tables.group_key(run))
    out: dict[Cell, list[Candidate]] = {}
    for (cell, setting), members in by.items():
        if len(keys[(cell, setting)]) > 1:
            a, b = sorted(keys[(cell, setting)])[:2]
            raise ValueError(
                f"{cell[2]} on {cell[0]} ({cell[1]}), {setting_text(setting)}: runs with different "
                f"contexts {dict(a)} and {dict(b)}; pass one sweep per budget"
            )
        seeds = [r.get("seed") for r in members]
        dup = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
        if dup:
            raise ValueError(
                f"{cell[2]} on {cell[0]} ({cell[1]}), {setting_text(setting)}: seed(s) {dup} "
                f"appear twice ({', '.join(r.get('_path', '?') for r in members[:2])})"
            )
        out.setdefault(cell, []).append(Candidate(cell, setting, members))
    for cands in out.values():
        cands.sort(key=lambda c: c.rank)
    return out


def select(tune_runs: Sequence[dict[str, Any]]) -> dict[Cell, Candidate]:
    """The best setting of every (task, model, method): lowest median t_gen99 on the tuning
    runs, a failure counted at the budget (ties: fewer failures, then lower mean)."""
    return {cell: cands[0] for cell, cands in candidates(tune_runs).items()}


def check_no_leak(tune_runs: Sequence[dict[str, Any]], report_runs: Sequence[dict[str, Any]]):
    """Refuse a report seed that was also a tuning seed of the same method on the same task."""
    tuned: dict[Cell, set] = {}
    for r in tune_runs:
        tuned.setdefault(cell_of(r), set()).add(r.get("seed"))
    for r in report_runs:
        cell = cell_of(r)
        if r.get("seed") in tuned.get(cell, ()):
            raise ValueError(
                f"report seed {r.get('seed')} of {cell[2]} on {cell[0]} ({cell[1]}) is also a "
                f"tuning seed ({r.get('_path', '?')}): report on fresh seeds"
            )


# --------------------------------------------------------------------------- bootstrap
def bootstrap_ratio(
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    paired: bool = False,
    n_boot: int = N_BOOT,
    seed: int = RNG_SEED,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(median(numerator) / median(denominator), low, high): percentile interval of the ratio
    over `n_boot` resamples of the seeds (the same seed indices for both when `paired`)."""
    num, den = np.asarray(numerator, float), np.asarray(denominator, float)
    if len(num) == 0 or len(den) == 0:
        raise ValueError("bootstrap_ratio: both samples must hold at least one value")
    if paired and len(num) != len(den):
        raise ValueError(f"bootstrap_ratio: paired samples of sizes {len(num)} and {len(den)}")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ratio: level={level} is invalid: accepted (0, 1)")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(num), size=(n_boot, len(num)))
    j = i if paired else rng.integers(0, len(den), size=(n_boot, len(den)))
    ratios = np.median(num[i], axis=1) / np.median(den[j], axis=1)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(np.median(num) / np.median(den)), float(lo), float(hi)


def speedup(base: Candidate, ours: Candidate, **kw: Any) -> dict[str, Any]:
    """How many times sooner `ours` reaches the target than `base` (failures at the budget);
    paired by seed when both ran the same seeds."""
    paired = base.seeds == ours.seeds
    point, lo, hi = bootstrap_ratio(base.values, ours.values, paired=paired, **kw)
    return {
        "speedup": point,
        "low": lo,
        "high": hi,
        "paired": paired,
        # a baseline failure counted at the budget makes the speedup a lower bound
        "lower_bound": base.failures > 0,
        "upper_bound": ours.failures > 0,
        # most of our runs failed: the ratio measures two budgets, not two methods
        "undefined": 2 * ours.failures > len(ours.runs),
    }


def fmt_speedup(s: dict[str, Any] | None) -> str:
    if s is None:
        return "n/a"
    if s.get("undefined"):
        return "n/a (GROKtimizer's median run did not reach the target)"
    sign = "≥" if s["lower_bound"] and not s["upper_bound"] else ""
    sign = "~" if s["lower_bound"] and s["upper_bound"] else sign
    return f"{sign}{s['speedup']:.2f}× [{s['low']:.2f}, {s['high']:.2f}]"


# --------------------------------------------------------------------------- the report
@dataclass
class Report:
    selection: dict[Cell, Candidate]
    grids: dict[Cell, list[Candidate]]
    # (task, model) -> method -> {"reference": Candidate | None, "tuned": Candidate | None}
    rows: dict[tuple[str, str], dict[str, dict[str, Candidate | None]]]
    speedups: list[dict[str, Any]]
    ours: str


def _method_rank(name: str) -> tuple:
    order = (*tables.METHOD_ORDER, "groktimizer_cdm")
    return (order.index(name) if name in order else len(order), name)


def build_report(
    tune_runs: Sequence[dict[str, Any]],
    report_runs: Sequence[dict[str, Any]],
    *,
    ours: str = "groktimizer",
    n_boot: int = N_BOOT,
    seed: int = RNG_SEED,
) -> Report:
    """Select on `tune_runs`, then read the reference and tuned settings from `report_runs`."""
    check_no_leak(tune_runs, report_runs)
    grids = candidates(tune_runs)
    selection = {cell: cands[0] for cell, cands in grids.items()}
    reported = candidates(report_runs)
    rows: dict[tuple[str, str], dict[str, dict[str, Candidate | None]]] = {}
    for cell in sorted(
        set(selection) | set(reported), key=lambda c: (c[0], c[1], _method_rank(c[2]))
    ):
        cands = reported.get(cell, [])
        ref = next((c for c in cands if c.setting == ()), None)
        tuned = None
        if cell in selection:
            want = selection[cell].setting
            tuned = next((c for c in cands if c.setting == want), None) or next(
                (c for c in cands if all(matches(r, want) for r in c.runs)), None
            )
        rows.setdefault(cell[:2], {})[cell[2]] = {"reference": ref, "tuned": tuned}
    speedups = []
    for (task, model), methods in rows.items():
        for name in [m for m in methods if m.startswith(ours)]:
            for base in methods:
                if base.startswith(ours):
                    continue
                for role in ("tuned", "reference"):
                    b, o = methods[base][role], methods[name][role]
                    if b is None or o is None:
                        continue
                    s = speedup(b, o, n_boot=n_boot, seed=seed)
                    speedups.append(
                        {"task": task, "model": model, "ours": name, "baseline": base,
                         "role": role, **s}
                    )  # fmt: skip
    return Report(selection, grids, rows, speedups, ours)


def best_filter(report: Report, task: str, model: str) -> str | None:
    """The gradient filter with the lower tuning median (chosen on tuning seeds, not report)."""
    found = [report.selection[c] for c in report.selection if c[:2] == (task, model)]
    filters = [c for c in found if c.cell[2] in BASELINE_FILTERS]
    return min(filters, key=lambda c: c.rank).cell[2] if filters else None


def _find_speedup(report: Report, task, model, ours, base, role) -> dict[str, Any] | None:
    for s in report.speedups:
        if (s["task"], s["model"], s["ours"], s["baseline"], s["role"]) == (
            task, model, ours, base, role
        ):  # fmt: skip
            return s
    return None


def headline(report: Report, task: str, model: str) -> list[str]:
    """README sentences: speedup over the best-tuned AdamW and filter next to the reference."""
    out = []
    filt = best_filter(report, task, model)
    for base, label in (("adamw", "AdamW"), (filt, f"gradient filter ({filt})")):
        if base is None:
            continue
        t = _find_speedup(report, task, model, report.ours, base, "tuned")
        r = _find_speedup(report, task, model, report.ours, base, "reference")
        if t is None and r is None:
            continue
        out.append(
            f"- {task}, {model}: GROKtimizer reaches 99% validation accuracy "
            f"{fmt_speedup(t)} sooner than the best-tuned {label} "
            f"(vs the reference settings: {fmt_speedup(r)})"
        )
    return out


def _cell_text(c: Candidate | None, metric: str) -> str:
    if c is None:
        return "not run"
    return tables.fmt_cell(tables.summarize(c.runs, [metric], TARGET), metric)


def _fail_text(c: Candidate | None) -> str:
    if c is None:
        return "—"
    s = tables.summarize(c.runs, [], TARGET)
    text = f"{c.failures}/{len(c.runs)}"
    return text + (f" ({s['diverged']} diverged)" if s["diverged"] else "")


def markdown(report: Report, n_boot: int, seed: int) -> str:
    lines: list[str] = []
    for (task, model), methods in report.rows.items():
        lines += [f"## {task}, {model}", ""]
        head = ["method", "setting", "chosen on", *METRICS, "failures"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, roles in methods.items():
            sel = report.selection.get((task, model, name))
            for role in ("reference", "tuned"):
                c = roles[role]
                if role == "tuned":
                    setting = setting_text(sel.setting) if sel else "no tuning runs"
                    if c is not None and c is roles["reference"]:
                        setting += " (= reference)"
                    chosen = (
                        f"median {sel.median:.0f}, {sel.failures}/{len(sel.runs)} failed "
                        f"(seeds {','.join(map(str, sel.seeds))})"
                        if sel
                        else "—"
                    )
                else:
                    setting, chosen = "reference", "—"
                seeds = f" seeds {','.join(map(str, c.seeds))}" if c else ""
                cells = [f"{name} ({role}{seeds})", setting, chosen]
                cells += [_cell_text(c, m) for m in METRICS] + [_fail_text(c)]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        sp = [s for s in report.speedups if (s["task"], s["model"]) == (task, model)]
        if sp:
            lines += [
                f"Speedup (median t_gen99 of the baseline / of ours, failures at the budget; "
                f"95% bootstrap interval, {n_boot} resamples of the seeds, RNG seed {seed}; "
                "≥: the baseline had failures, so a lower bound):",
                "",
                "| ours | over | tuned vs tuned | reference vs reference |",
                "|---|---|---|---|",
            ]
            pairs = dict.fromkeys((s["ours"], s["baseline"]) for s in sp)
            for o, b in pairs:
                t = _find_speedup(report, task, model, o, b, "tuned")
                r = _find_speedup(report, task, model, o, b, "reference")
                lines.append(f"| {o} | {b} | {fmt_speedup(t)} | {fmt_speedup(r)} |")
            lines.append("")
        hl = headline(report, task, model)
        if hl:
            lines += ["Headline:", "", *hl, ""]
        lines += ["Tuning grid (median t_gen99 on the tuning seeds, failures at the budget):", ""]
        lines += ["| method | setting | median | failures | chosen |", "|---|---|---|---|---|"]
        for name in methods:
            for c in report.grids.get((task, model, name), []):
                chosen = "✓" if c is report.selection[(task, model, name)] else ""
                lines.append(
                    f"| {name} | {setting_text(c.setting)} | {c.median:.0f} | "
                    f"{c.failures}/{len(c.runs)} | {chosen} |"
                )
        lines.append("")
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def figure(report: Report, task: str, model: str, path: Path) -> None:
    """t_gen99 (median over tuning seeds, failures at the budget) against weight decay, one
    line per method on log-log axes: at each weight decay the best setting of the other grid
    dimensions; hollow markers where some runs failed, an x where the median failed, a star at
    the tuned setting."""
    plt = tables._plt()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    budget = None
    names = [m for m in report.rows[(task, model)] if (task, model, m) in report.grids]
    for j, name in enumerate(names):
        color = colors[j % len(colors)]
        best: dict[float, Candidate] = {}
        for c in report.grids[(task, model, name)]:
            wd = tables._number(tables._cfg(c.runs[0], "optimizer.weight_decay"))
            if wd is None or wd <= 0:
                continue
            if wd not in best or c.rank < best[wd].rank:
                best[wd] = c
            budget = max(budget or 0, max(tables._number(r.get("max_steps")) or 0 for r in c.runs))
        if not best:
            continue
        wds = sorted(best)
        ys = [best[w].median for w in wds]
        ax.plot(wds, ys, "-", color=color, alpha=0.7, label=name)
        for w, y in zip(wds, ys, strict=True):
            c = best[w]
            censored = c.failures * 2 >= len(c.runs) and y >= max(c.values)
            if censored:
                ax.plot(w, y, "x", color=color, ms=9, mew=2)
            else:
                ax.plot(w, y, "o", color=color, mfc="white" if c.failures else color, ms=6)
            if c.failures:
                ax.annotate(f"{c.failures}/{len(c.runs)}✗", (w, y), textcoords="offset points",
                            xytext=(0, 6), ha="center", fontsize=7, color=color)  # fmt: skip
        sel = report.selection[(task, model, name)]
        wd_sel = tables._number(tables._cfg(sel.runs[0], "optimizer.weight_decay"))
        if wd_sel:
            ax.plot(wd_sel, sel.median, "*", color=color, ms=14, mec="k")
    if budget:
        ax.axhline(budget, color="grey", ls=":", lw=1)
        ax.text(ax.get_xlim()[0], budget, " budget", va="bottom", fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("weight decay (each method in its own units: AdamW decoupled, Adam L2, CDM λ)")
    ax.set_ylabel("steps to 99% val (median over tuning seeds)")
    ax.set_title(
        f"{task}, {model}: ★ tuned; hollow: some runs failed; ✗: median run failed", fontsize=9
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def selection_json(selection: dict[Cell, Candidate]) -> list[dict[str, Any]]:
    return [
        {
            "task": c.cell[0],
            "model": c.cell[1],
            "method": c.cell[2],
            "setting": dict(c.setting),
            "overrides": c.overrides,
            "median": c.median,
            "failures": c.failures,
            "n": len(c.runs),
            "seeds": c.seeds,
        }
        for c in selection.values()
    ]


def write(
    report: Report, out: str | Path, *, n_boot: int, seed: int, sources: str, command: str | None
) -> list[Path]:
    """fair.md, fair.csv, speedup.csv, selection.json and one PNG per task and model."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    rows = []
    for (task, model), methods in report.rows.items():
        for name, roles in methods.items():
            sel = report.selection.get((task, model, name))
            for role, c in roles.items():
                row = {"task": task, "model": model, "method": name, "role": role}
                row["setting"] = setting_text(sel.setting if role == "tuned" and sel else ())
                row["seeds"] = " ".join(map(str, c.seeds)) if c else ""
                row["n"] = len(c.runs) if c else 0
                row["failures"] = c.failures if c else ""
                s = tables.summarize(c.runs, METRICS, TARGET) if c else {}
                for m in METRICS:
                    for q in ("median", "q25", "q75"):
                        row[f"{m}_{q}"] = tables._csv_number(s.get(f"{m}_{q}", ""))
                row["tuning_median_t_gen99"] = sel.median if sel and role == "tuned" else ""
                rows.append(row)
    with open(out / "fair.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    written.append(out / "fair.csv")
    if report.speedups:
        with open(out / "speedup.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(report.speedups[0]))
            w.writeheader()
            w.writerows(
                {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in s.items()}
                for s in report.speedups
            )
        written.append(out / "speedup.csv")
    runio.write_json(out / "selection.json", selection_json(report.selection))
    written.append(out / "selection.json")
    md = [
        "# Fair comparison: each method tuned on its grid (tuning seeds), reported on fresh seeds",
        "",
        "Each method's setting is chosen by median t_gen99 on the tuning seeds, a run that did "
        "not reach 99% validation accuracy counted at its budget (and as a failure); rows give "
        "median [q25, q75] over the report seeds (`>B`: not reached within B steps).",
        "",
        markdown(report, n_boot, seed),
        f"- sources: {sources}",
    ]
    if command:
        md.append(f"- command: `{command}`")
    runio.write_text(out / "fair.md", "\n".join(md) + "\n")
    written.append(out / "fair.md")
    for task, model in report.rows:
        if any((task, model, m) in report.grids for m in report.rows[(task, model)]):
            png = out / f"fair_{_slug(model)}_{_slug(task)}.png"
            figure(report, task, model, png)
            written.append(png)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m groktimizer.analysis.fair",
        description="Select each method's setting on tuning seeds, report it on fresh seeds.",
    )
    p.add_argument("--tune", nargs="+", required=True, help="tuning sweep directories")
    p.add_argument("--report", nargs="*", default=[], help="report run directories")
    p.add_argument("--out", help="output directory (tables, figures, selection.json)")
    p.add_argument("--ours", default="groktimizer", help="methods named so are not baselines")
    p.add_argument("--n-boot", type=int, default=N_BOOT)
    p.add_argument("--rng-seed", type=int, default=RNG_SEED)
    p.add_argument("--select-only", action="store_true", help="print the selection as JSON")
    p.add_argument("--command", default=None, help="the training commands, quoted in fair.md")
    a = p.parse_args(argv)
    if a.n_boot < 1:
        p.error(f"--n-boot={a.n_boot} is invalid: accepted an integer >= 1")
    try:
        tune = tables.load_runs(a.tune)
        if not tune:
            raise FileNotFoundError(f"no {runio.RESULTS} under {' '.join(a.tune)}")
        if a.select_only:
            print(json.dumps(selection_json(select(tune)), indent=2))
            return 0
        if not a.out:
            raise ValueError("--out is required unless --select-only")
        report_runs = tables.load_runs(a.report) if a.report else []
        rep = build_report(tune, report_runs, ours=a.ours, n_boot=a.n_boot, seed=a.rng_seed)
        sources = f"tuning {' '.join(a.tune)}; report {' '.join(a.report) or '(none)'}"
        written = write(rep, a.out, n_boot=a.n_boot, seed=a.rng_seed, sources=sources,
                        command=a.command)  # fmt: skip
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"fair: {len(rep.selection)} methods selected -> {', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
