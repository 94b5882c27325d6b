"""Regression panel: the default GROKtimizer on setups outside the robustness suite, one seed
each, compared with the figures committed at an earlier commit.

The suite (``scripts/robustness.py``) is what the default is judged on; this panel is where a
change to it shows its cost elsewhere: minibatches of 32-512, sparse parity in minibatches,
transformers in minibatches, a-b mod 71 at width 256, large init, small p, tanh, 25% train,
label noise. A rule that helped the suite and broke one of these (a-b mod 71 in minibatches of
128 stopped reaching 99% validation at 259d408, found by hand) is flagged here.

    python scripts/panel.py --workers 2
    python scripts/panel.py --workers 2 --write-reference   # make these figures the reference

Each job is ``train.py +experiment=robustness +setting=<s> method=groktimizer <overrides>`` in
``<out>/<setting>/<name>``, ``<out>`` by default ``outputs/multiruns/panel/<commit>`` (a new
commit runs anew; re-running at one commit skips its finished jobs). The table goes to
``outputs/results/cpu/panel/panel.md`` with the reference beside; the exit status is 1 when a
job regressed: not reached where the reference reached, more than ``--slower`` times the
reference's steps, or (scored at the budget) a final accuracy lower by more than ``--acc-drop``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("robustness", ROOT / "scripts" / "robustness.py")
robustness = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(robustness)  # type: ignore[union-attr]

# name: (setting, budget, overrides); a+b mod 97, 40% train, the default MLP unless said
MB = "trainer.batch_size="
AMOD71 = ("dataset.op=sub", "dataset.p=71", "dataset.train_fraction=0.35", "model.width=256")
PANEL: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "mlp_mb32": ("add97_mlp", 12000, (MB + "32",)),
    "mlp_mb64": ("add97_mlp", 8000, (MB + "64",)),
    "mlp_mb64_eval20": ("add97_mlp", 8000, (MB + "64", "trainer.eval_every=20")),
    "mlp_mb128": ("add97_mlp", 6000, (MB + "128",)),
    "mlp_mb128_eval100": ("add97_mlp", 6000, (MB + "128", "trainer.eval_every=100")),
    "mlp_mb512": ("add97_mlp", 5000, (MB + "512",)),
    "sub71_w256_mb128": ("add97_mlp", 15000, (*AMOD71, MB + "128")),
    "parity_mb64": ("parity40_3", 8000, (MB + "64",)),
    "parity_mb128": ("parity40_3", 8000, (MB + "128",)),
    "parity_30bits_k4": ("parity40_3", 4000, ("dataset.n_bits=30", "dataset.k=4")),
    "tf1_mb512": ("add97_tf1", 3000, (MB + "512",)),
    "tf1_sub59_mb128": (
        "add97_tf1",
        6000,
        ("dataset.op=sub", "dataset.p=59", "dataset.train_fraction=0.5", MB + "128"),
    ),
    "tf1_ln_mb256": ("add97_tf1_ln", 3000, (MB + "256",)),
    "tf2_ln_add_mb256": ("mul97_tf2_ln_minibatch", 3000, ("dataset=modular_add", MB + "256")),
    "tf3": ("add97_tf1", 4000, ("model.n_layers=3",)),
    "mlp_init3": ("add97_mlp", 4000, ("model.init_scale=3",)),
    "mlp_p31_60": ("add97_mlp", 4000, ("dataset.p=31", "dataset.train_fraction=0.6")),
    "mlp_sqsum67": (
        "add97_mlp",
        4000,
        ("dataset.op=sq_sum", "dataset.p=67", "dataset.train_fraction=0.5"),
    ),
    "mlp_w128_e32": ("add97_mlp", 4000, ("model.width=128", "model.embed_dim=32")),
    "mlp_tanh": ("add97_mlp", 4000, ("model.activation=tanh",)),
    "mlp_train25": ("add97_mlp", 5000, ("dataset.train_fraction=0.25",)),
    "mlp_noise15": ("add97_mlp", 5000, ("dataset.label_noise=0.15",)),
    "digits_mb50": ("digits_lowsample", 5000, (MB + "50",)),
    "digits_cnn_bn": ("digits_lowsample", 5000, ("model=cnn", "model.norm=batch")),
}
REFERENCE = Path("outputs/results/cpu/panel/panel.json")


def default_out() -> Path:
    """``outputs/multiruns/panel/<short commit>[-dirty]``: runs of other code are not reused."""

    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "nogit"
    dirty = "-dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    return Path("outputs/multiruns/panel") / f"{commit}{dirty}"


def score(run: dict) -> dict:
    """What the panel compares: steps to 99% validation, or the final accuracy where scored at
    the budget (digits), and whether the run ended normally."""
    return {
        "t_gen99": run.get("t_gen99"),
        "final_val_acc": run.get("final_val_acc"),
        "status": run.get("status"),
        "steps": run.get("steps"),
        "code": ((run.get("code") or {}).get("git_commit") or "")[:7] or None,
    }


def verdict(now: dict, ref: dict | None, slower: float, acc_drop: float, at_budget: bool) -> str:
    """'regressed', 'improved', 'same' or 'new' (no reference) for one job."""
    if ref is None:
        return "new"
    if at_budget:
        a, b = now.get("final_val_acc"), ref.get("final_val_acc")
        if a is None or b is None:
            return "regressed" if a is None and b is not None else "same"
        return "regressed" if a < b - acc_drop else ("improved" if a > b + acc_drop else "same")
    t, r = now.get("t_gen99"), ref.get("t_gen99")
    if t is None:
        return "regressed" if r is not None else "same"
    if r is None:
        return "improved"
    if t > slower * r:
        return "regressed"
    return "improved" if slower * t < r else "same"


def table(
    rows: list[tuple[str, dict, dict | None, str]], ref_code: str | None, command: str
) -> str:
    def fig(s: dict | None) -> str:
        if s is None:
            return "–"
        if s.get("t_gen99") is not None:
            return f"{s['t_gen99']:,}"
        acc = s.get("final_val_acc")
        return f">{s.get('steps'):,} ({acc:.3f})" if acc is not None else f">{s.get('steps')}"

    out = [
        "# Regression panel: the default GROKtimizer outside the suite (seed 0)",
        "",
        f"| job | setting | overrides | now | reference ({ref_code or 'none'}) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for name, now, ref, v in rows:
        setting, _, extra = PANEL[name]
        out.append(f"| {name} | {setting} | {' '.join(extra)} | {fig(now)} | {fig(ref)} | {v} |")
    out += [
        "",
        "t_gen99 (steps to 99% validation) or `>steps (final val acc)`; digits at the budget.",
        f"Command: `{command}`; each job: `python train.py +experiment=robustness"
        " +setting=<setting> method=groktimizer trainer.max_steps=<budget> trainer.seeds=[0]"
        " <overrides>`.",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="default: see default_out()")
    ap.add_argument("--results", type=Path, default=Path("outputs/results/cpu/panel"))
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    ap.add_argument("--jobs", nargs="+", default=list(PANEL), choices=list(PANEL))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--slower", type=float, default=1.5, help="steps ratio that is a regression")
    ap.add_argument("--acc-drop", type=float, default=0.005, help="for jobs scored at the budget")
    ap.add_argument("--write-reference", action="store_true")
    args = ap.parse_args(argv)
    if args.slower <= 1:
        ap.error(f"--slower must be > 1, got {args.slower}")
    out = args.out or default_out()
    out = out if out.is_absolute() else ROOT / out
    res_dir = args.results if args.results.is_absolute() else ROOT / args.results
    ref_path = args.reference if args.reference.is_absolute() else ROOT / args.reference
    (out / "logs").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:7.0f}s] {msg}", flush=True)

    def job(name: str) -> None:
        setting, steps, extra = PANEL[name]
        robustness.run_job(out, setting, "groktimizer", steps, 1, log, extra, name)

    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(job, args.jobs))
    reference = json.loads(ref_path.read_text()) if ref_path.exists() else {}
    ref_jobs = reference.get("jobs", {})
    rows, now_all, bad = [], {}, []
    for name in args.jobs:
        setting, _, _ = PANEL[name]
        runs = robustness.results(out / setting / name)
        if not runs:
            log(f"{name}: no results.json (see {out / 'logs'})")
            bad.append(name)
            continue
        now = score(runs[0])
        now_all[name] = now
        at_budget = setting in robustness.AT_BUDGET
        v = verdict(now, ref_jobs.get(name), args.slower, args.acc_drop, at_budget)
        if v == "regressed":
            bad.append(name)
        rows.append((name, now, ref_jobs.get(name), v))
    res_dir.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python scripts/panel.py", *(sys.argv[1:] if argv is None else argv)])
    (res_dir / "panel.md").write_text(table(rows, reference.get("code"), command))
    if args.write_reference:
        code = ",".join(sorted({s.get("code") for s in now_all.values()} - {None})) or None
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        ref_path.write_text(json.dumps({"code": code, "jobs": now_all}, indent=1) + "\n")
    log(f"table: {res_dir / 'panel.md'}; regressed: {', '.join(bad) or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
