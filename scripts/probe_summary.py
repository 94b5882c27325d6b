"""Summarise the probe_auto.py runs (outputs/results/autotune/*.jsonl) into one Markdown table.

  python scripts/probe_summary.py outputs/results/autotune/probe_*.jsonl \
      > outputs/results/autotune/results.md
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict


def main(paths: list[str]) -> None:
    runs = []
    for path in paths:
        with open(path) as f:
            runs += [json.loads(line) for line in f if line.strip()]
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in runs:
        cells[(r["setting"], r["method"], r["budget"])].append(r)
    print(
        "| setting | method | budget | seeds | t_switch | t_gen99 (per seed) | median t_gen99 | "
        "final train / val acc | collapsed | diverged | phase-2 η, λ (final) | "
        "events (non-switch) | curvature HVPs | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (setting, method, budget), rs in sorted(cells.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        t99 = [r["t_gen99"] for r in rs]
        reached = [t for t in t99 if t is not None]
        med = statistics.median(reached) if len(reached) == len(t99) else "not all reached"
        acc = ", ".join(f"{r['final']['train_acc']:.3f}/{r['final']['val_acc']:.3f}" for r in rs)
        ev = defaultdict(int)
        hvps = 0
        for r in rs:
            for e in r["events"]:
                if e["event"] != "switch":
                    ev[e["event"]] += 1
                rec = e.get("auto_lr") if isinstance(e.get("auto_lr"), dict) else e
                hvps += int(rec.get("hvps", 0) or 0)
        lrwd = ", ".join(f"{r['final']['lr']:.2g}, {r['final']['wd']:.2g}" for r in rs)
        print(
            f"| {setting} | {method} | {budget} | {','.join(str(r['seed']) for r in rs)} "
            f"| {', '.join(str(r['t_switch']) for r in rs)} "
            f"| {', '.join('-' if t is None else str(t) for t in t99)} | {med} | {acc} "
            f"| {sum(r['collapsed'] for r in rs)} | {sum(r['diverged'] for r in rs)} | {lrwd} "
            f"| {dict(ev) or '-'} | {hvps} | {sum(r['wall_s'] for r in rs):.0f} |"
        )
    print()
    print("Commands:")
    for cmd in sorted({r.get("command", "?") for r in runs}):
        print(f"- `{cmd}`")


if __name__ == "__main__":
    main(sys.argv[1:])
