"""Speed-up of one method over others, with a seed-bootstrap interval, from run folders.

Every results.json under each directory is one run; runs are grouped as the table builder groups
them (``tables.group_key``: overrides minus the seed and run-invariant keys), so a weight-decay
sweep gives one group per value. A run that did not reach the
target counts as its budget (a lower bound on its t_gen99, so its ratio is a lower bound too).

    python scripts/speedup.py --ours outputs/multiruns/robustness/cpu/add97_tf1/groktimizer \\
        --others outputs/multiruns/transformer_tuned_adamw/add97_40 \\
        outputs/multiruns/robustness/cpu/add97_tf1/adamw --out outputs/results/x.md
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

from groktimizer.analysis import fair, tables


def groups(dirs: list[Path], target: str) -> dict[str, list[tuple[float, bool]]]:
    out: dict[str, list[tuple[float, bool]]] = {}
    for run in tables.load_runs(dirs):
        name = " ".join(f"{k}={v}" for k, v in tables.group_key(run))
        t = run.get(target)
        reached = t is not None
        out.setdefault(name, []).append((float(t if reached else run["max_steps"]), reached))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ours", type=Path, nargs="+", required=True)
    ap.add_argument("--others", type=Path, nargs="+", required=True)
    ap.add_argument("--target", default="t_gen99")
    ap.add_argument("--title", default="Speed-up")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    ours = groups(args.ours, args.target)
    if len(ours) != 1:
        print(f"error: --ours must hold one group of runs, found {sorted(ours)}", file=sys.stderr)
        return 2
    ((name, runs),) = ours.items()
    mine = [t for t, _ in runs]
    lines = [
        f"# {args.title}",
        "",
        f"{args.target} per seed (`>` = not reached, counted at its budget); ratio = the other's "
        f"median / ours (95% seed-bootstrap interval; a censored run makes it a lower bound).",
        "",
        "| method | t per seed | median | ratio to ours |",
        "|---|---|---|---|",
    ]

    def row(label: str, rs: list[tuple[float, bool]], ratio: str) -> str:
        per = ", ".join(f"{int(t)}" if ok else f">{int(t)}" for t, ok in rs)
        med = statistics.median(t for t, _ in rs)
        return f"| {label} | {per} | {med:g} | {ratio} |"

    lines.append(row(f"**{name}** (ours)", runs, "1"))
    for label, rs in sorted(groups(args.others, args.target).items()):
        ratio, lo, hi = fair.bootstrap_ratio([t for t, _ in rs], mine)
        bound = "≥ " if not all(ok for _, ok in rs) else ""
        lines.append(row(label, rs, f"{bound}{ratio:.2f} [{lo:.2f}, {hi:.2f}]"))
    lines += ["", f"- command: `python {shlex.join(sys.argv)}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
