"""Fair comparison, two stages: tune every method on its grid (seeds 0-2), select each method's
best setting on those seeds, report the reference and tuned settings on fresh seeds (3-7), then
build the table (python -m groktimizer.analysis.fair).

    python scripts/fair.py --scale smoke                      # plumbing check, minutes on CPU
    python scripts/fair.py --scale cpu --models mlp           # cut grids and seeds: ~1-2 CPU-hours
    python scripts/fair.py --scale full --models mlp --dry-run    # print the exact commands
    python scripts/fair.py --scale full --models mlp --stage tune --launcher joblib
    python scripts/fair.py --scale full --models mlp              # all stages (resumes)
    python scripts/fair.py --scale full -- trainer.device=cuda trainer.ensemble=vmap   # on a GPU

Overrides after ``--`` reach every train.py command; they may set only the context (trainer.*,
model.*, dataset.*), never a method's hyperparameters, which belong to the grid.

The grids live in conf/fair/grids.yaml (8 points each at full scale,
same budget). Sweeps go to outputs/multiruns/fair/<scale>/<model>/{tune,report}/<method>; every
tuning job's folder is named by its overrides and a report run by its role, so running again
resumes unfinished runs and skips finished ones. Tables: outputs/results/fair/<model> (full) or
outputs/results/smoke/fair/<model> (smoke).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TUNE_SEEDS = {"full": [0, 1, 2], "cpu": [0], "smoke": [0]}
REPORT_SEEDS = {"full": [3, 4, 5, 6, 7], "cpu": [3, 4, 5], "smoke": [1]}
# raw-gradient phase 2 (plain GD, plain CDM) diverges on the transformer: MLP only
METHODS = {
    "mlp": ["adamw", "adam_ema", "adam_ma", "biphasic_gd", "groktimizer_cdm", "groktimizer"],
    "transformer": ["adamw", "adam_ema", "adam_ma", "groktimizer"],
}
# train.py overrides per scale and model (the budget of the full scale is the experiments' 6,000)
SCALE_OVERRIDES = {
    "full": {"mlp": [], "transformer": []},
    # the cut that fits a 2-core CPU: MLP only, 4,000-step budget
    "cpu": {"mlp": ["trainer.max_steps=4000"]},
    "smoke": {
        "mlp": ["trainer.max_steps=150", "trainer.checkpoint_every=100"],
        "transformer": ["trainer.max_steps=40", "trainer.checkpoint_every=100"],
    },
}


def _load_grids() -> dict[str, dict[str, list[str]]]:
    """scale -> method -> sweep overrides, from conf/fair/grids.yaml (the one place they live)."""
    import yaml

    return yaml.safe_load((ROOT / "conf" / "fair" / "grids.yaml").read_text())


GRIDS = _load_grids()
FINISHED = ("completed", "reached-target", "diverged")


def seeds_override(seeds: list[int]) -> str:
    return f"trainer.seeds=[{','.join(map(str, seeds))}]"


OUTPUTS = Path("outputs")


def base_dir(scale: str, model: str) -> Path:
    return OUTPUTS / "multiruns" / "fair" / scale / model


def out_dir(scale: str, model: str) -> Path:
    base = OUTPUTS / "results"
    if scale == "full":
        return base / "fair" / model
    return base / scale / "fair" / model


def _common(method: str, model: str, scale: str, extra=()) -> list[str]:
    return [f"+experiment=fair_{method}", f"model={model}", *SCALE_OVERRIDES[scale][model], *extra]


def check_extra(extra: list[str]) -> None:
    """Extra overrides set the context only: a method setting there would hide the reference."""
    from groktimizer.analysis import fair, tables

    for o in extra:
        key = tables.parse_override(o)[0]
        if key.split(".")[0].split("/")[0] not in (*fair.CONTEXT_KEYS, "launcher", "hydra"):
            raise ValueError(
                f"override {o!r}: after -- only trainer.*, model*, dataset* are accepted "
                "(a method's hyperparameters belong to its grid in conf/experiment/fair_*.yaml)"
            )


def tune_command(
    method: str, model: str, scale: str, launcher: str = "basic", extra=()
) -> list[str]:
    sweep = base_dir(scale, model) / "tune" / method
    cmd = [sys.executable, "train.py", "-m", *_common(method, model, scale, extra)]
    cmd += GRIDS[scale][method]
    cmd += [seeds_override(TUNE_SEEDS[scale]), "trainer.progress=false", f"hydra.sweep.dir={sweep}"]
    return cmd + ([f"launcher={launcher}"] if launcher != "basic" else [])


def report_dir(method: str, model: str, scale: str, role: str) -> Path:
    return base_dir(scale, model) / "report" / method / role


def report_command(
    method: str, model: str, scale: str, overrides: list[str] | None = None, extra=()
) -> list[str]:
    """One run of `method` on the report seeds: its reference setting, or `overrides`."""
    role = "tuned" if overrides else "reference"
    cmd = [sys.executable, "train.py", *_common(method, model, scale, extra), *(overrides or [])]
    cmd += [seeds_override(REPORT_SEEDS[scale]), "trainer.progress=false"]
    return cmd + [f"hydra.run.dir={report_dir(method, model, scale, role)}"]


def table_command(model: str, scale: str, shown: str | None = None) -> list[str]:
    base = base_dir(scale, model)
    cmd = [sys.executable, "-m", "groktimizer.analysis.fair", "--tune", str(base / "tune")]
    cmd += ["--report", str(base / "report"), "--out", str(out_dir(scale, model))]
    return cmd + (["--command", shown] if shown else [])


def show(cmd: list[str]) -> str:
    parts = ["python" if c == sys.executable else c for c in cmd]
    return shlex.join(p.replace(str(ROOT) + "/", "") for p in parts)


def finished(run_dir: Path, seeds: list[int]) -> bool:
    from groktimizer.experiment import runio

    files = [ROOT / run_dir / f"seed_{s}" / runio.RESULTS for s in seeds]
    if len(seeds) == 1 and not files[0].exists():
        files = [ROOT / run_dir / runio.RESULTS]
    return all(f.exists() and runio.read_json(f).get("status") in FINISHED for f in files)


def _run(cmd: list[str], dry: bool, env: dict[str, str]) -> int:
    print(f"$ {show(cmd)}", flush=True)
    if dry:
        return 0
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def selection_for(model: str, scale: str) -> dict[str, list[str]]:
    """method -> the override strings of its selected setting (tuning seeds only)."""
    from groktimizer.analysis import fair, tables

    tune = base_dir(scale, model) / "tune"
    runs = [r for r in tables.load_runs([ROOT / tune]) if fair.model_of(r) == model]
    return {cell[2]: cand.overrides for cell, cand in fair.select(runs).items()}


def reference_covers(method: str, model: str, scale: str, overrides: list[str]) -> bool:
    """Whether the finished reference run already has the tuned values (no second run)."""
    from groktimizer.analysis import fair, tables
    from groktimizer.experiment import runio

    d = ROOT / report_dir(method, model, scale, "reference")
    files = sorted(d.rglob(runio.RESULTS)) if d.exists() else []
    if not files:
        return False
    run = runio.read_json(files[0])
    setting = tuple(tables.parse_override(o) for o in overrides)
    return all(fair._same_value(tables._cfg(run, k), v) for k, v in setting)


def main(argv: list[str] | None = None) -> int:
    global OUTPUTS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", choices=("smoke", "cpu", "full"), default="smoke")
    ap.add_argument("--models", default="mlp,transformer", help="comma-separated: mlp,transformer")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    ap.add_argument("--stage", choices=("tune", "report", "table", "all"), default="all")
    ap.add_argument("--launcher", default="basic", help="tuning multiruns: basic, joblib, ...")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--outputs", default=str(OUTPUTS), help="where multiruns/ and results/ go")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    a = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        check_extra(extra)
    except ValueError as err:
        ap.error(str(err))
    OUTPUTS = Path(a.outputs)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    for model in a.models.split(","):
        if model not in METHODS:
            ap.error(f"--models: {model!r} is not one of {', '.join(METHODS)}")
        if model not in SCALE_OVERRIDES[a.scale]:
            ap.error(
                f"--models: {model!r} has no {a.scale} scale "
                f"(models at that scale: {', '.join(SCALE_OVERRIDES[a.scale])})"
            )
        methods = METHODS[model]
        if GRIDS[a.scale] is not None:
            methods = [m for m in methods if m in GRIDS[a.scale]]
        if a.methods:
            methods = [m for m in methods if m in a.methods.split(",")]
        if a.stage in ("tune", "all"):
            for m in methods:
                cmd = tune_command(m, model, a.scale, a.launcher, extra)
                if _run(cmd, a.dry_run, env):
                    return 1
        if a.stage in ("report", "all"):
            if a.dry_run:
                selected = {m: ["<selected overrides>"] for m in methods}
            else:
                selected = selection_for(model, a.scale)
            for m in methods:
                for overrides in (None, selected.get(m)):
                    if overrides is not None and not a.dry_run:
                        if not overrides or reference_covers(m, model, a.scale, overrides):
                            print(f"# {m}: the tuned setting is the reference setting")
                            continue
                    if m not in selected and overrides is None and not a.dry_run:
                        print(f"warning: {m} has no tuning runs; reference only", file=sys.stderr)
                    role = "tuned" if overrides else "reference"
                    if finished(report_dir(m, model, a.scale, role), REPORT_SEEDS[a.scale]):
                        print(f"# {m} {role}: finished, skipped")
                        continue
                    cmd = report_command(m, model, a.scale, overrides, extra)
                    if _run(cmd, a.dry_run, env):
                        return 1
        if a.stage in ("table", "all"):
            text = f"python scripts/fair.py --scale {a.scale} --models {model}"
            text += f" -- {shlex.join(extra)}" if extra else ""
            if _run(table_command(model, a.scale, text), a.dry_run, env):
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
