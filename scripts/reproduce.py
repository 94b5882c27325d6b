"""Rebuild the paper's tables: the Hydra multirun of each table, then its Markdown / CSV / PNG.

    python scripts/reproduce.py table2 --scale smoke         # minutes on a 2-core CPU
    python scripts/reproduce.py all --scale full             # the real tables (hours on CPU)
    python scripts/reproduce.py table3 --scale full --dry-run    # print the exact commands
    python scripts/reproduce.py table4 --scale full --mnist /data/mnist   # + MNIST 1k rows
    python scripts/reproduce.py table2 --scale full -- dataset=modular_add  # extra overrides

Sweeps go to outputs/multiruns/<experiment>/<scale> with one folder per job named by its
overrides, so running a command again resumes every unfinished job from its checkpoint and skips
finished ones (delete the folder to start over). Tables go to outputs/results/<table> (full) or
outputs/results/smoke/<table> (smoke), next to the command that produced them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the train.py overrides of each table's multirun, per scale (the grids live in conf/experiment)
SWEEPS: dict[str, dict[str, list[str]]] = {
    "table2": {
        # a+b mod 97 only, 2 seeds, 900 steps: GROKtimizer gets to 99% val (about 570 steps),
        # the baselines visibly do not yet (AdamW wd 1 needs about 4,000, Adam+EMA about 1,100)
        "smoke": [
            "+experiment=table2_grokking",
            "dataset=modular_add",
            "method=groktimizer,adamw,adam_ema",
            "trainer.max_steps=900",
            "trainer.seeds=[0,1]",
            "trainer.sharpness_iters=20",
        ],
        "full": ["+experiment=table2_grokking"],
    },
    "table3": {
        "smoke": [
            "+experiment=table3_damping_wd",
            "optimizer.damping=0.5,1,2",
            "optimizer.weight_decay=3e-4,1e-3",
            "trainer.max_steps=500",
            "trainer.seeds=[0]",
        ],
        "full": ["+experiment=table3_damping_wd"],
    },
    "table4": {
        "smoke": ["+experiment=table4_lowsample", "trainer.max_steps=1500", "trainer.seeds=[0,1]"],
        "full": ["+experiment=table4_lowsample"],
    },
    "robustness": {
        # two MLP settings, one seed, 1,500 steps: minutes on a 2-core CPU
        "smoke": [
            "+experiment=robustness",
            "+setting=add97_mlp,mul59_mlp50",
            "trainer.max_steps=1500",
            "trainer.seeds=[0]",
        ],
        "full": ["+experiment=robustness"],
    },
}
EXPERIMENT = {
    "table2": "table2_grokking",
    "table3": "table3_damping_wd",
    "table4": "table4_lowsample",
    "table5": "table2_grokking",  # table 5 reads table 2's final models
    "robustness": "robustness",
}
TABLES = ("table1", "table2", "table3", "table4", "table5", "robustness")


# relative to the repository root (the commands run there), so tables quote portable commands
def sweep_dir(table: str, scale: str, suffix: str = "") -> Path:
    return Path("outputs") / "multiruns" / f"{EXPERIMENT[table]}{suffix}" / scale


def out_dir(table: str, scale: str) -> Path:
    base = Path("outputs") / "results"
    return base / table if scale == "full" else base / "smoke" / table


def _train_cmd(overrides: list[str], sweep: Path, launcher: str) -> list[str]:
    cmd = [sys.executable, "train.py", "-m", *overrides, f"hydra.sweep.dir={sweep}"]
    if launcher != "basic":
        cmd.append(f"launcher={launcher}")
    return cmd


def _table_cmd(dirs: list[Path], table: str, out: Path, train_cmd: list[str] | None) -> list[str]:
    cmd = [sys.executable, "-m", "groktimizer.analysis.tables", *map(str, dirs), "--table", table]
    cmd += ["--out", str(out)]
    if train_cmd:
        cmd += ["--command", _show(train_cmd)]
    return cmd


def _show(cmd: list[str]) -> str:
    """The command as a reader would type it (python, paths relative to the repository)."""
    parts = ["python" if c == sys.executable else c for c in cmd]
    return shlex.join(p.replace(str(ROOT) + "/", "") for p in parts)


def commands(
    table: str, scale: str, launcher: str = "basic", mnist: str | None = None, extra=()
) -> list[tuple[list[str], bool]]:
    """[(command, is_training)] that rebuild `table` at `scale`."""
    if table == "table1":
        cmd = [sys.executable, "scripts/table1.py", "--scale", scale]
        return [(cmd + ["--out", str(out_dir("table1", scale))], False)]
    base = "table2" if table == "table5" else table
    runs: list[tuple[list[str], Path]] = []
    sweep = sweep_dir(base, scale)
    runs.append((_train_cmd([*SWEEPS[base][scale], *extra], sweep, launcher), sweep))
    if table == "table4" and mnist:
        mnist_sweep = sweep_dir(base, scale, "_mnist")
        over = [*SWEEPS[base][scale], "dataset=mnist", f"dataset.source={mnist}", *extra]
        runs.append((_train_cmd(over, mnist_sweep, launcher), mnist_sweep))
    out = [(cmd, True) for cmd, _ in runs]
    shown = " && ".join(_show(c) for c, _ in runs)
    out.append((_table_cmd([d for _, d in runs], table, out_dir(table, scale), None), False))
    out[-1][0].extend(["--command", shown])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("tables", nargs="+", choices=[*TABLES, "all"])
    ap.add_argument("--scale", choices=("smoke", "full"), default="smoke")
    ap.add_argument("--launcher", default="basic", help="conf/launcher option (basic, joblib, ...)")
    ap.add_argument("--mnist", default=None, help="table4: a local MNIST copy (dataset.source)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--build-only", action="store_true", help="rebuild tables from the outputs")
    argv = list(sys.argv[1:] if argv is None else argv)
    # everything after "--" goes to train.py as overrides
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    a = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    a.overrides = extra
    tables = list(TABLES) if "all" in a.tables else list(dict.fromkeys(a.tables))
    if "table5" in tables and "table2" in tables:  # table 5 re-reads table 2's sweep
        tables.remove("table5")
        tables.insert(tables.index("table2") + 1, "table5")
    env = dict(os.environ)
    if a.launcher != "basic":  # parallel jobs: one thread each unless told otherwise
        env.setdefault("OMP_NUM_THREADS", "1")
    trained: set[str] = set()
    for table in tables:
        for cmd, training in commands(table, a.scale, a.launcher, a.mnist, a.overrides):
            key = " ".join(cmd)
            if training and (a.build_only or key in trained):
                continue
            print(f"$ {_show(cmd)}", flush=True)
            if training:
                trained.add(key)
            if a.dry_run:
                continue
            rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
            if rc != 0:
                print(f"error: exit {rc} from {_show(cmd)}", file=sys.stderr)
                return rc
    if not a.dry_run:
        print_headlines(tables, a.scale)
    return 0


def print_headlines(tables: list[str], scale: str) -> None:
    """Where each table is, and its GROKtimizer rows (the claim in one line each)."""
    print("\ntables:")
    for table in tables:
        md = ROOT / out_dir(table, scale) / f"{table}.md"
        if not md.exists():
            print(f"  {table}: not built ({md.relative_to(ROOT)} missing)")
            continue
        print(f"  {table}: {md.relative_to(ROOT)}")
        lines = md.read_text().splitlines()
        head = next((ln for ln in lines if ln.startswith("| ")), None)
        ours = [ln for ln in lines if ln.startswith("| ") and "| groktimizer |" in ln]
        if head and ours:
            print(f"    {head}")
            for line in ours:
                print(f"    {line}")


if __name__ == "__main__":
    sys.exit(main())
