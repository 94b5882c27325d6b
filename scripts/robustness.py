"""Robustness suite in the cut that fits a small CPU: the default GROKtimizer on every setting,
then each baseline only as long as the criterion needs.

The suite's claim is "where a baseline reaches 99% validation, GROKtimizer does too with median
t_gen99 <= 1/3 of AdamW's (wd 1.0) and <= 1/2 of Adam+EMA's". Once GROKtimizer's median T is
known, a baseline run past ``ratio * T`` steps cannot decide that claim any more: reaching later
satisfies it, not reaching at all leaves it vacuous. So, per setting:

1. GROKtimizer (method=groktimizer, untouched), all seeds, the setting's budget B;
2. if every seed reached: AdamW to min(B, 3 T), Adam+EMA to min(B, 2 T); a baseline that did not
   reach by then is reported censored at that step ("> 3T"). Else both baselines to B.
   Settings scored at a fixed budget (digits: test accuracy, no stop at target) run to B.

    python scripts/robustness.py --out outputs/multiruns/robustness/cpu --workers 2
    python -m groktimizer.analysis.tables outputs/multiruns/robustness/cpu --table robustness \\
        --out outputs/results/cpu/robustness

Each (setting, method) is one Hydra multirun job in ``<out>/<setting>/<method>``; re-running
skips the jobs whose seeds all finished.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# one budget per setting; the transformers first (the costliest GROKtimizer jobs)
SETTINGS = {
    "add97_tf1": 3000,
    "add97_tf1_ln": 3000,
    "mul97_tf2_ln_minibatch": 3000,
    "add97_mlp": 5000,
    "sub113_mlp30": 5000,
    "mul59_mlp50": 5000,
    "div97_deep": 5000,
    "quad53_mlp": 5000,
    "add97_mlp_minibatch": 5000,
    "parity40_3": 5000,
    "digits_lowsample": 5000,
}
AT_BUDGET = {"digits_lowsample"}  # scored by test accuracy at the budget
RATIO = {"adamw": 3, "adam_ema": 2}
EVAL_EVERY = 10


def results(job_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(job_dir.glob("**/results.json"))]


def finished(job_dir: Path, seeds: int, steps: int) -> bool:
    """Every seed ended (not interrupted) and either reached the target or ran ``steps`` steps
    (a baseline cut at a smaller cap runs again when GROKtimizer's median moved up)."""
    runs = results(job_dir)
    return len(runs) >= seeds and all(
        r.get("status") != "interrupted"
        and (r.get("t_gen99") is not None or int(r.get("steps") or 0) >= steps)
        for r in runs
    )


def run_job(
    out: Path,
    setting: str,
    method: str,
    steps: int,
    seeds: int,
    log,
    extra: tuple[str, ...] = (),
    name: str | None = None,
) -> None:
    name = name or method
    job_dir = out / setting / name
    if finished(job_dir, seeds, steps):
        log(f"{setting} {name}: done already")
        return
    runs = results(job_dir)
    if runs and all(r.get("status") != "interrupted" for r in runs):
        # ended at a smaller cap: keep those runs, out of the table's tree, and run again
        dest = out.with_name(out.name + "_superseded") / setting / f"{name}.{int(time.time())}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        job_dir.rename(dest)
        log(f"{setting} {name}: runs cut below {steps} steps moved to {dest}")
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "+experiment=robustness",
        f"+setting={setting}",
        f"method={method}",
        f"trainer.max_steps={steps}",
        f"trainer.seeds=[{','.join(str(s) for s in range(seeds))}]",
        "trainer.threads=1",
        f"hydra.sweep.dir={job_dir}",
        *extra,
    ]
    log(f"{setting} {name}: {' '.join(cmd[1:])}")
    t0 = time.monotonic()
    with open(out / "logs" / f"{setting}.{name}.log", "w") as fh:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    log(f"{setting} {name}: exit {rc} after {time.monotonic() - t0:.0f} s")


def baseline_budget(out: Path, setting: str, method: str, budget: int, seeds: int) -> int:
    if setting in AT_BUDGET:
        return budget
    runs = results(out / setting / "groktimizer")
    t = [r.get("t_gen99") for r in runs]
    if len(runs) < seeds or any(x is None for x in t):
        return budget
    cap = RATIO[method] * statistics.median(t)
    return min(budget, int(math.ceil(cap / EVAL_EVERY) * EVAL_EVERY))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("outputs/multiruns/robustness/cpu"))
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--candidate",
        nargs="+",
        metavar="NAME [OVERRIDE ...]",
        help="run only GROKtimizer with these Hydra overrides, into <setting>/<NAME> (no "
        "baselines): a phase-2 variant tried over the whole suite before it becomes the default",
    )
    args = ap.parse_args(argv)
    out = args.out if args.out.is_absolute() else ROOT / args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:7.0f}s] {msg}", flush=True)

    # GROKtimizer everywhere first (the suite's first claim: no collapse with one default), then
    # the baselines, settings in the order given; a candidate runs the first stage alone
    name, *extra = args.candidate or ["groktimizer"]

    def grok(setting: str) -> None:
        steps = SETTINGS[setting]
        run_job(out, setting, "groktimizer", steps, args.seeds, log, tuple(extra), name)

    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(grok, args.settings))
        if not args.candidate:
            pairs = [(s, m) for s in args.settings for m in RATIO]
            jobs = [(s, m, baseline_budget(out, s, m, SETTINGS[s], args.seeds)) for s, m in pairs]
            list(pool.map(lambda j: run_job(out, *j, args.seeds, log), jobs))
    log("all settings done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
