"""Multirun outputs -> the paper's tables: Markdown + CSV + PNG.

    python -m groktimizer.analysis.tables outputs/multiruns/table2_grokking/full --table table2 \
        --out outputs/results/table2

Every ``results.json`` under the sweep directories is one run (a seed-ensemble job writes one per
member, ``seed_<s>/results.json``). Runs are grouped by their Hydra task overrides minus the seed
(and minus keys that do not change the optimisation: resume, progress, device, ...), so a group is
"one method on one task with every seed it was run with".

Each cell is ``median [q25, q75]`` over the group's runs. A run that never reached a step
milestone (``t_gen99`` ...) inside its budget, or diverged, enters the step statistics as +inf
(right-censored), so a censored median prints as ``>budget`` instead of silently improving by
dropping the run; the counts ``n, reached, not_reached, diverged, incomplete`` are columns of every
table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from groktimizer.experiment import runio

INF = math.inf

# metrics counted in steps: a missing value means "not reached" (censored), never "dropped"
STEP_METRICS = ("t_interp", "t_switch", "t_gen95", "t_gen99", "grokking_delay", "steps_to_baseline")
# plain values: a missing / non-finite value (a diverged run) is left out of the median and the
# cell says how many runs it holds
VALUE_METRICS = (
    "final_val_acc",
    "best_val_acc",
    "final_train_acc",
    "final_weight_norm",
    "wall_time_s",
    "sharpness",
)

# overrides that do not change what is measured never split a group: the run-invariant keys and
# the seeds (a group is one method on one task with every seed it was run with)
SEED_KEYS = frozenset({"seed", "trainer.seeds"})
# keys shown through the task / method labels rather than the "variant" column
LABEL_KEYS = frozenset({"method", "dataset", "dataset.op", "dataset.p", "experiment"})

METHOD_ORDER = (
    "adamw",
    "adam_ema",
    "adam_ma",
    "biphasic_gd",
    "groktimizer",
    "lowsample_adamw",
    "lowsample_ema",
    "lowsample_groktimizer",
)
OP_SYMBOLS = {
    "add": "a+b",
    "sub": "a-b",
    "mul": "a*b",
    "div": "a/b",
    "quad1": "a^2+ab+b^2",
    "quad2": "a^2+ab+b^2+a",
    "sq_sum": "a^2+b^2",
    "cube1": "a^3+ab",
    "cube2": "a^3+ab^2+b",
}
OP_ORDER = tuple(OP_SYMBOLS)


# --------------------------------------------------------------------------- loading
def load_runs(sweep_dirs: str | Path | Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every ``results.json`` under `sweep_dirs` (recursively), each with ``_path`` added.

    Raises FileNotFoundError for a directory that does not exist. A file that is not valid JSON
    is reported on stderr and skipped (results are written atomically, so this means the file
    was not written by the trainer).
    """
    if isinstance(sweep_dirs, (str, Path)):
        sweep_dirs = [sweep_dirs]
    runs = []
    for d in sweep_dirs:
        root = Path(d)
        if not root.exists():
            raise FileNotFoundError(f"sweep directory {root} does not exist")
        files = [root] if root.is_file() else sorted(root.rglob(runio.RESULTS))
        # an earlier run's files that a fresh start moved aside are not results
        files = [f for f in files if runio.SUPERSEDED not in f.relative_to(root).parts[:-1]]
        for path in files:
            try:
                run = runio.read_json(path)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                print(f"warning: skipping {path}: {err}", file=sys.stderr)
                continue
            run["_path"] = str(path)
            runs.append(run)
    return runs


# --------------------------------------------------------------------------- grouping
def parse_override(text: str) -> tuple[str, str]:
    """``method=adamw`` or ``+method=adamw`` -> ("method", "adamw"); ``~key`` -> ("key", "~")."""
    key, _, value = text.partition("=")
    deleted = key.startswith("~")
    key = key.lstrip("+~")
    return key, ("~" if deleted else value)


def _ignored(key: str) -> bool:
    return key in SEED_KEYS or runio.is_run_invariant(key)


def group_key(run: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The run's overrides, sorted, without the seed and other keys that do not change a run."""
    pairs = [parse_override(o) for o in run.get("overrides") or []]
    key = tuple(sorted((k, v) for k, v in pairs if not _ignored(k)))
    if not key:  # not launched through Hydra: its experiment is all we know
        key = (("experiment_name", str(run.get("experiment_name", "default"))),)
    return key


def _is_single_phase(run: dict[str, Any]) -> bool:
    schedule = _cfg(run, "schedule") or {}
    return schedule.get("kind") == "single" or ("_target_" in schedule and not schedule["_target_"])


def _cfg(run: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = run.get("config") or {}
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def method_label(run: dict[str, Any]) -> str:
    """The ``method=`` override when there is one, else the method group's choice recorded in
    results.json, else a name read from the resolved config (``optimizer._target_``, or the
    ``optimizer.name`` of runs written before configs named classes)."""
    for k, v in (parse_override(o) for o in run.get("overrides") or []):
        if k == "method":
            return v
    if run.get("method"):
        return str(run["method"])
    target = _cfg(run, "optimizer._target_")
    opt = str(target).rsplit(".", 1)[-1].lower() if target else _cfg(run, "optimizer.name", "?")
    if opt == "cdm" and _cfg(run, "optimizer.momentum") == 0:
        opt = "gd"
    filt = _cfg(run, "grad_filter._target_") or _cfg(run, "grad_filter.kind", "none")
    filt = {"groktimizer.GradFilterEMA": "ema", "groktimizer.GradFilterMA": "ma"}.get(filt, filt)
    name = opt if filt in (None, "none") else f"{opt}+{filt}"
    if _cfg(run, "schedule._target_"):
        phase1 = str(_cfg(run, "schedule.phase1._target_", "?")).rsplit(".", 1)[-1].lower()
        name = f"{phase1}->{name}"
    elif _cfg(run, "schedule.kind") == "biphasic":
        name = f"{_cfg(run, 'schedule.phase1.name', '?')}->{name}"
    return name


def task_label(run: dict[str, Any]) -> str:
    target = str(_cfg(run, "dataset._target_", "?")).rsplit(".", 1)[-1]
    if target == "modular_arithmetic":
        op = _cfg(run, "dataset.op")
        return f"{OP_SYMBOLS.get(op, op)} mod {_cfg(run, 'dataset.p')}"
    if target == "sparse_parity":
        return f"parity n={_cfg(run, 'dataset.n_bits')} k={_cfg(run, 'dataset.k')}"
    if target in ("digits", "mnist"):
        name = "digits" if target == "digits" else "MNIST"
        return f"{name} {_cfg(run, 'dataset.n_train')} train"
    if target == "linear_regression":
        return f"linreg n={_cfg(run, 'dataset.n')} d={_cfg(run, 'dataset.d')}"
    return target


def _task_rank(run: dict[str, Any]) -> tuple:
    op = _cfg(run, "dataset.op")
    return (0 if op is not None else 1, OP_ORDER.index(op) if op in OP_ORDER else 99)


def _method_rank(name: str) -> tuple:
    return (METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER), name)


def group_runs(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs grouped by :func:`group_key`; each group has task, method, variant, key, runs.

    ``variant`` names the overrides that differ between groups beyond the task and the method
    (e.g. a swept weight decay), so two rows never look identical.
    """
    by_key: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        by_key.setdefault(group_key(run), []).append(run)
    values: dict[str, set[str]] = {}
    for key in by_key:
        for k, v in key:
            values.setdefault(k, set()).add(v)
    all_keys = set(values)
    varying = sorted(
        k
        for k in all_keys
        if k not in LABEL_KEYS and (len(values[k]) > 1 or any(k not in dict(key) for key in by_key))
    )
    groups = []
    for key, members in by_key.items():
        d = dict(key)
        groups.append(
            {
                "key": key,
                "task": task_label(members[0]),
                "method": method_label(members[0]),
                "variant": ", ".join(f"{k}={d[k]}" for k in varying if k in d),
                "runs": sorted(members, key=lambda r: (r.get("seed") is None, r.get("seed"))),
            }
        )
    groups.sort(
        key=lambda g: (
            _task_rank(g["runs"][0]),
            g["task"],
            _method_rank(g["method"]),
            g["variant"],
        )
    )
    return groups


# --------------------------------------------------------------------------- statistics
def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) that keeps +inf (censored) values exact."""
    if not values:
        return math.nan
    xs = sorted(values)
    h = (len(xs) - 1) * q
    lo, hi = math.floor(h), math.ceil(h)
    a, b = xs[lo], xs[hi]
    if lo == hi or a == b:
        return a
    if math.isinf(b):  # anything interpolated towards a censored value is censored
        return b
    return a + (h - lo) * (b - a)


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)):
        return float(x)
    try:
        return float(x)  # "nan" / "inf" strings from runio
    except (TypeError, ValueError):
        return None


def step_value(run: dict[str, Any], metric: str) -> float | None:
    """A step milestone: the step, +inf when not reached (censored), None when not applicable."""
    if metric == "t_switch" and _is_single_phase(run):
        return None
    v = _number(run.get(metric))
    return INF if v is None or math.isnan(v) else v


def value_of(run: dict[str, Any], metric: str) -> float | None:
    v = _number(run.get(metric))
    return v if v is not None and math.isfinite(v) else None


def collapsed(run: dict[str, Any], target: str = "t_gen99") -> bool:
    """Interpolated at some point, then the fit was lost (decay won): a finished run that did not
    reach ``target`` and ended below 90% train accuracy."""
    return (
        run.get(target) is None
        and run.get("t_interp") is not None
        and (value_of(run, "final_train_acc") or 0.0) < 0.9
        and run.get("status") in ("completed", "reached-target")
    )


def summarize(runs: Sequence[dict[str, Any]], metrics: Sequence[str], target: str = "t_gen99"):
    """Counts and median / quartiles of `metrics` over `runs` (nothing is dropped silently).

    reached: the target milestone was hit; diverged: status "diverged" without reaching it;
    incomplete: interrupted / still running without reaching it; invalid: refused as bad input
    (a multirun job recorded with status "invalid"); not_reached: the budget ran out.
    """
    out: dict[str, Any] = {"n": len(runs)}
    hit = [r.get(target) is not None for r in runs]
    status = [str(r.get("status")) for r in runs]
    out["reached"] = sum(hit)
    out["diverged"] = sum(1 for h, s in zip(hit, status, strict=True) if not h and s == "diverged")
    out["incomplete"] = sum(
        1 for h, s in zip(hit, status, strict=True) if not h and s in ("interrupted", "running")
    )
    out["invalid"] = sum(1 for s in status if s == "invalid")
    out["collapsed"] = sum(collapsed(r, target) for r in runs)  # a subset of not_reached
    out["not_reached"] = (
        out["n"] - out["reached"] - out["diverged"] - out["incomplete"] - out["invalid"]
    )
    budgets = [_number(r.get("max_steps")) for r in runs]
    out["budget"] = int(max((b for b in budgets if b is not None), default=0)) or None
    for metric in metrics:
        getter = step_value if metric in STEP_METRICS else value_of
        vals = [v for v in (getter(r, metric) for r in runs) if v is not None]
        out[f"{metric}_count"] = len(vals)
        out[f"{metric}_median"] = quantile(vals, 0.5)
        out[f"{metric}_q25"] = quantile(vals, 0.25)
        out[f"{metric}_q75"] = quantile(vals, 0.75)
    return out


# --------------------------------------------------------------------------- formatting
def _fmt_step(x: float, budget: int | None) -> str:
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return f">{budget}" if budget else "not reached"
    return f"{x:.0f}"


def _fmt_value(x: float, metric: str) -> str:
    if math.isnan(x):
        return "n/a"
    if metric.endswith("_acc"):
        return f"{x:.3f}"
    if metric == "wall_time_s":
        return f"{x:.1f}"
    return f"{x:.3g}"


def fmt_cell(stats: dict[str, Any], metric: str) -> str:
    """``median [q25, q75]``; the count of runs behind a value metric when some are missing."""
    med, q25, q75 = (stats[f"{metric}_{s}"] for s in ("median", "q25", "q75"))
    if metric in STEP_METRICS:
        f = lambda x: _fmt_step(x, stats["budget"])  # noqa: E731
    else:
        f = lambda x: _fmt_value(x, metric)  # noqa: E731
    if math.isnan(med):
        return "n/a"
    text = f(med) if stats["n"] == 1 else f"{f(med)} [{f(q25)}, {f(q75)}]"
    count = stats[f"{metric}_count"]
    if metric not in STEP_METRICS and count < stats["n"]:
        text += f" ({count}/{stats['n']} runs)"
    return text


def _csv_number(x: Any) -> Any:
    if isinstance(x, float):
        if math.isinf(x):
            return "inf"
        if math.isnan(x):
            return ""
        return f"{x:.6g}"
    return x


# --------------------------------------------------------------------------- tables
COUNT_COLUMNS = ("n", "reached", "not_reached", "diverged", "incomplete", "invalid")


class Table:
    """Rows of (labels, stats) plus the notes printed under the Markdown table."""

    def __init__(self, name: str, metrics: Sequence[str], target: str = "t_gen99"):
        self.name, self.metrics, self.target = name, tuple(metrics), target
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def add(self, group: dict[str, Any]) -> dict[str, Any]:
        row = {
            "task": group["task"],
            "method": group["method"],
            "variant": group["variant"],
            "overrides": " ".join(f"{k}={v}" for k, v in group["key"]),
            "runs": group["runs"],
            **summarize(group["runs"], self.metrics, self.target),
        }
        self.rows.append(row)
        return row

    def csv_rows(self) -> list[dict[str, Any]]:
        out = []
        for r in self.rows:
            row = {k: r[k] for k in ("task", "method", "variant", *COUNT_COLUMNS, "budget")}
            for m in self.metrics:
                for s in ("median", "q25", "q75", "count"):
                    row[f"{m}_{s}"] = _csv_number(r[f"{m}_{s}"])
            row["overrides"] = r["overrides"]
            out.append(row)
        return out

    def markdown(self) -> str:
        show_variant = any(r["variant"] for r in self.rows)
        show_incomplete = any(r["incomplete"] for r in self.rows)
        show_invalid = any(r.get("invalid") for r in self.rows)
        show_collapsed = self.name == "robustness"
        head = ["task", "method"] + (["variant"] if show_variant else [])
        head += [*self.metrics, "reached", "not reached", "diverged"]
        head += ["incomplete"] if show_incomplete else []
        head += ["invalid"] if show_invalid else []
        head += ["collapsed"] if show_collapsed else []
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r["task"], r["method"]] + ([r["variant"]] if show_variant else [])
            cells += [fmt_cell(r, m) for m in self.metrics]
            cells += [f"{r['reached']}/{r['n']}", str(r["not_reached"]), str(r["diverged"])]
            cells += [str(r["incomplete"])] if show_incomplete else []
            cells += [str(r.get("invalid", 0))] if show_invalid else []
            cells += [str(r.get("collapsed", 0))] if show_collapsed else []
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def _provenance(runs: Sequence[dict[str, Any]], sweep_dirs: Sequence[str]) -> list[str]:
    commits = sorted({str((r.get("code") or {}).get("git_commit") or "?")[:12] for r in runs})
    dirty = any((r.get("code") or {}).get("git_dirty") for r in runs)
    devices = sorted({str(r.get("device", "?")) for r in runs})
    torch_v = sorted({str((r.get("code") or {}).get("torch_version", "?")) for r in runs})
    return [
        f"- runs: {len(runs)} results.json under {', '.join(str(d) for d in sweep_dirs)}",
        f"- code: git {', '.join(commits)}{' (uncommitted changes)' if dirty else ''}; "
        f"torch {', '.join(torch_v)}; device {', '.join(devices)}",
    ]


def build_standard(name: str, groups: list[dict[str, Any]], metrics: Sequence[str], target: str):
    table = Table(name, metrics, target)
    for g in groups:
        table.add(g)
    return table


def _first_step_at(run: dict[str, Any], acc: float) -> float:
    """First evaluation step with val_acc >= acc in the run's metrics.jsonl (+inf if none)."""
    for row in runio.MetricsLog(Path(run["_path"]).parent / runio.METRICS).read():
        v = _number(row.get("val_acc"))
        if v is not None and v >= acc:
            return float(row["step"])
    return INF


def build_table4(groups: list[dict[str, Any]], metrics: Sequence[str], target: str, ours: str):
    """Adds ``steps_to_baseline``: first step at the best baseline's median final accuracy.

    Baselines are the methods whose name does not contain `ours`; the target accuracy is taken
    per task (the best baseline group's median final val accuracy).
    """
    best: dict[str, float] = {}
    for g in groups:
        if ours in g["method"]:
            continue
        accs = [a for a in (value_of(r, "final_val_acc") for r in g["runs"]) if a is not None]
        if accs:
            best[g["task"]] = max(best.get(g["task"], -INF), quantile(accs, 0.5))
    if not best:  # no baseline in the sweep: nothing to measure against
        metrics = [m for m in metrics if m != "steps_to_baseline"]
    for g in groups:
        acc = best.get(g["task"])
        for r in g["runs"]:
            r["steps_to_baseline"] = None if acc is None else _first_step_at(r, acc)
    table = build_standard("table4", groups, metrics, target)
    for task, acc in best.items():
        table.notes.append(
            f"- {task}: steps_to_baseline = first evaluation with val acc >= {acc:.4f} "
            f"(the best baseline's median final val acc)"
        )
    return table


TABLES: dict[str, dict[str, Any]] = {
    "runs": {"metrics": ("t_interp", "t_switch", "t_gen95", "t_gen99", "final_val_acc")},
    "robustness": {
        "metrics": ("t_interp", "t_switch", "t_gen99", "final_val_acc", "best_val_acc"),
        "title": "Robustness suite: the default GROKtimizer against AdamW (wd 1) and Adam + EMA "
        "(steps; median [IQR] over seeds; collapsed = interpolated, then ended below 90% train "
        "accuracy)",
    },
    "table2": {
        "metrics": (
            "t_interp",
            "t_gen95",
            "t_gen99",
            "grokking_delay",
            "final_val_acc",
            "final_weight_norm",
            "wall_time_s",
        ),
        "title": "Table 2: grokking benchmarks (steps; median [IQR] over seeds)",
    },
    "table3": {
        "metrics": ("t_switch", "t_gen95", "t_gen99", "final_val_acc"),
        "title": "Table 3: damping x weight decay, median steps to 99% val (t_gen99)",
    },
    "table4": {
        "metrics": (
            "final_val_acc",
            "best_val_acc",
            "steps_to_baseline",
            "t_interp",
            "final_weight_norm",
        ),
        "title": "Table 4: low-sample large-init (test accuracy at budget; steps to the best "
        "baseline's accuracy)",
    },
    "table5": {
        "metrics": ("sharpness", "final_weight_norm", "final_val_acc", "t_gen99"),
        "title": "Table 5: flat minima: sharpness (top Hessian eigenvalue) and weight norm of "
        "the final models",
    },
}


# --------------------------------------------------------------------------- table 3 grid
def table3_grid(table: Table) -> tuple[list[float], list[float], dict[tuple[float, float], dict]]:
    """(dampings, weight decays, {(damping, wd): row}); one group per cell or ValueError."""
    cells: dict[tuple[float, float], dict[str, Any]] = {}
    for row in table.rows:
        r0 = row["runs"][0]
        cell = (float(_cfg(r0, "optimizer.damping")), float(_cfg(r0, "optimizer.weight_decay")))
        if cell in cells:
            raise ValueError(
                f"table3: two groups share damping={cell[0]}, weight_decay={cell[1]}: "
                f"{cells[cell]['overrides']!r} and {row['overrides']!r}; pass one sweep"
            )
        cells[cell] = row
    dampings = sorted({c[0] for c in cells})
    wds = sorted({c[1] for c in cells})
    return dampings, wds, cells


def table3_markdown(table: Table) -> str:
    dampings, wds, cells = table3_grid(table)
    head = ["damping ζ \\ weight decay λ", *(f"{w:g}" for w in wds)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for z in dampings:
        out = [f"{z:g}"]
        for w in wds:
            r = cells.get((z, w))
            if r is None:
                out.append("—")
                continue
            fail = r["n"] - r["reached"]
            text = _fmt_step(r["t_gen99_median"], r["budget"])
            if fail:
                text += f" ({fail}/{r['n']} failed" + (
                    f", {r['diverged']} diverged)" if r["diverged"] else ")"
                )
            out.append(text)
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(row: dict[str, Any]) -> str:
    return row["method"] + (f" ({row['variant']})" if row["variant"] else "")


def figure_bars(table: Table, metric: str, path: Path, ylabel: str, log: bool = True) -> None:
    """Grouped bars per task: median with IQR whiskers; censored medians hatched up to budget."""
    plt = _plt()
    tasks = list(dict.fromkeys(r["task"] for r in table.rows))
    labels = list(dict.fromkeys(_label(r) for r in table.rows))
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks) * max(1, len(labels) / 4)), 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, lab in enumerate(labels):
        for i, task in enumerate(tasks):
            row = next((r for r in table.rows if r["task"] == task and _label(r) == lab), None)
            if row is None:
                continue
            cap = row["budget"] or 1
            med, q25, q75 = (row[f"{metric}_{s}"] for s in ("median", "q25", "q75"))
            if math.isnan(med):
                continue
            x = i - 0.4 + width * (j + 0.5)
            censored = math.isinf(med)
            h = cap if censored else med
            ax.bar(
                x,
                h,
                width,
                color=colors[j % len(colors)],
                hatch="//" if censored else None,
                alpha=0.5 if censored else 1.0,
                label=lab if i == 0 else None,
            )
            lo, hi = min(q25, cap), min(q75, cap)
            ax.errorbar(x, h, yerr=[[max(h - lo, 0)], [max(hi - h, 0)]], color="k", lw=1)
            fail = row["n"] - row["reached"]
            if fail and metric in STEP_METRICS:
                ax.text(x, h, f"{fail}/{row['n']}✗", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(tasks)), tasks, rotation=15)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title("hatched: median run not there by the budget; k/n✗: runs not there", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_heatmap(table: Table, path: Path) -> None:
    plt = _plt()
    import numpy as np

    dampings, wds, cells = table3_grid(table)
    grid = np.full((len(dampings), len(wds)), np.nan)
    for (z, w), r in cells.items():
        v = r["t_gen99_median"]
        grid[dampings.index(z), wds.index(w)] = math.log10(v) if math.isfinite(v) else np.nan
    fig, ax = plt.subplots(figsize=(1.6 * len(wds) + 2, 1.0 * len(dampings) + 1.5))
    cmap = plt.get_cmap("viridis_r").with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    for (z, w), r in cells.items():
        fail = r["n"] - r["reached"]
        text = _fmt_step(r["t_gen99_median"], r["budget"])
        if fail:
            text += f"\n{fail}/{r['n']} failed"
        ax.text(wds.index(w), dampings.index(z), text, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(wds)), [f"{w:g}" for w in wds])
    ax.set_yticks(range(len(dampings)), [f"{z:g}" for z in dampings])
    ax.set_xlabel("weight decay λ")
    ax.set_ylabel("damping ζ")
    ax.set_title("median steps to 99% val (grey: median not reached)")
    fig.colorbar(im, ax=ax, label="log10 t_gen99")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_curves(table: Table, path: Path) -> None:
    """Median validation accuracy vs step per method (one panel per task)."""
    plt = _plt()
    import numpy as np

    tasks = list(dict.fromkeys(r["task"] for r in table.rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for row in (r for r in table.rows if r["task"] == task):
            curves: dict[int, list[float]] = {}
            for run in row["runs"]:
                for m in runio.MetricsLog(Path(run["_path"]).parent / runio.METRICS).read():
                    v = _number(m.get("val_acc"))
                    if v is not None and math.isfinite(v):
                        curves.setdefault(int(m["step"]), []).append(v)
            if curves:
                steps = sorted(curves)
                ax.plot(
                    [max(s, 1) for s in steps],
                    [float(np.median(curves[s])) for s in steps],
                    label=_label(row),
                )
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("median val accuracy")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_scatter(table: Table, path: Path) -> None:
    """Sharpness vs weight norm, one point per run, colour = method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(dict.fromkeys(_label(r) for r in table.rows))
    for row in table.rows:
        pts = [
            (value_of(r, "final_weight_norm"), value_of(r, "sharpness"))
            for r in row["runs"]
            if value_of(r, "final_weight_norm") and value_of(r, "sharpness")
        ]
        if pts:
            j = labels.index(_label(row))
            ax.scatter(*zip(*pts, strict=True), color=colors[j % len(colors)], s=18)
    for j, lab in enumerate(labels):
        ax.scatter([], [], color=colors[j % len(colors)], label=lab)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("final weight norm")
    ax.set_ylabel("sharpness (top Hessian eigenvalue)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- entry points
def build(
    sweep_dirs: Sequence[str | Path],
    table: str,
    out: str | Path,
    *,
    target: str = "t_gen99",
    ours: str = "groktimizer",
    command: str | None = None,
    figure: bool = True,
) -> Table:
    """Read the runs, write ``<out>/<table>.md``, ``.csv`` and ``.png``; returns the table."""
    if table not in TABLES:
        raise ValueError(f"--table {table!r}: accepted {', '.join(TABLES)}")
    spec = TABLES[table]
    runs = load_runs(sweep_dirs)
    if not runs:
        raise FileNotFoundError(
            f"no {runio.RESULTS} under {', '.join(map(str, sweep_dirs))}: run the sweep first"
        )
    groups = group_runs(runs)
    metrics = spec["metrics"]
    if table == "table4":
        tab = build_table4(groups, metrics, target, ours)
    else:
        tab = build_standard(table, groups, metrics, target)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = tab.csv_rows()
    with open(out / f"{table}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md = [f"# {spec.get('title', table)}", ""]
    if table == "table3":
        tasks = ", ".join(dict.fromkeys(r["task"] for r in tab.rows))
        md += [f"Task: {tasks}.", "", table3_markdown(tab), "All cells with quartiles:", ""]
    md += [tab.markdown()]
    md += [
        "Cells: median [q25, q75] over the group's runs. Step milestones that a run did not "
        "reach within its budget (or that it never reached because it diverged) count as "
        f"+inf: `>B` means the median run did not get there in B steps. reached = runs that "
        f"hit {target}; not reached = budget used up; diverged = non-finite loss / norm.",
        "",
        *tab.notes,
        *_provenance(runs, [str(d) for d in sweep_dirs]),
    ]
    if command:
        md.append(f"- command: `{command}`")
    md.append(
        f"- table: `python -m groktimizer.analysis.tables {' '.join(map(str, sweep_dirs))} "
        f"--table {table} --out {out}`"
    )
    runio.write_text(out / f"{table}.md", "\n".join(md) + "\n")
    if figure:
        png = out / f"{table}.png"
        if table == "table3":
            figure_heatmap(tab, png)
        elif table == "table4":
            figure_curves(tab, png)
        elif table == "table5":
            figure_scatter(tab, png)
        else:
            figure_bars(tab, "t_gen99", png, "steps to 99% val (median, IQR)")
    return tab


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m groktimizer.analysis.tables",
        description="Aggregate multirun results.json files into a Markdown / CSV / PNG table.",
    )
    p.add_argument("sweep_dirs", nargs="+", help="sweep directories (searched recursively)")
    p.add_argument("--table", default="runs", choices=sorted(TABLES))
    p.add_argument(
        "--out", default=None, help="output directory (default: <first sweep dir>/tables)"
    )
    p.add_argument("--target", default="t_gen99", help="milestone that counts as reached")
    p.add_argument("--ours", default="groktimizer", help="table4: methods not baselines")
    p.add_argument("--command", default=None, help="the training command, quoted in the table")
    p.add_argument("--no-figure", action="store_true")
    a = p.parse_args(argv)
    if a.out is None:
        first = Path(a.sweep_dirs[0])
        a.out = str((first.parent if first.is_file() else first) / "tables")
    try:
        tab = build(
            a.sweep_dirs,
            a.table,
            a.out,
            target=a.target,
            ours=a.ours,
            command=a.command,
            figure=not a.no_figure,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{a.table}: {len(tab.rows)} rows from {sum(r['n'] for r in tab.rows)} runs -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
