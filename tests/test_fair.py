"""Fair comparison: selection on tuning seeds only, failures at the budget, bootstrap interval,
one row per method x {reference, tuned}, the grids' sizes, the driver's commands."""

import csv
import importlib.util
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from groktimizer.analysis import fair
from groktimizer.experiment import runio

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 6000


def fake_run(method, seed, t_gen99, *setting, model="MLP", status=None):
    """A results.json of `method` at `setting` (override strings; none: the reference)."""
    cfg = {
        "dataset": {
            "_target_": "groktimizer.experiment.data.modular_arithmetic",
            "op": "add",
            "p": 97,
        },
        "model": {"_target_": f"groktimizer.experiment.models.{model}"},
        "optimizer": {"name": "adamw", "weight_decay": 1.0, "lr": 1e-3},
        "schedule": {"kind": "single"},
        "grad_filter": {"kind": "ema", "alpha": 0.98},
    }
    for o in setting:
        key, value = o.split("=")
        group, name = key.split(".")
        cfg[group][name] = float(value)
    return {
        "seed": seed,
        "status": status or ("reached-target" if t_gen99 is not None else "completed"),
        "max_steps": BUDGET,
        "t_interp": 50,
        "t_gen95": None if t_gen99 is None else t_gen99 - 10,
        "t_gen99": t_gen99,
        "wall_time_s": 2.0,
        "overrides": [f"+experiment=fair_{method}", "trainer.seeds=[0,1]", *setting],
        "config": cfg,
    }


def sweep(method, seeds, times, *setting, **kw):
    return [fake_run(method, s, t, *setting, **kw) for s, t in zip(seeds, times, strict=True)]


WD3, WD5 = "optimizer.weight_decay=3", "optimizer.weight_decay=5"
TUNE, REPORT = [0, 1, 2], [3, 4, 5, 6, 7]


def test_selection_uses_only_the_tuning_seeds():
    tune = sweep("adamw", TUNE, [900, 1000, 1100], WD3) + sweep("adamw", TUNE, [1200] * 3, WD5)
    # on the report seeds wd 5 is far better: it must not change the choice
    report = sweep("adamw", REPORT, [2000] * 5, WD3) + sweep("adamw", REPORT, [300] * 5, WD5)
    report += sweep("adamw", REPORT, [4000] * 5)  # the reference (wd 1.0)
    (choice,) = fair.select(tune).values()
    assert choice.setting == (("optimizer.weight_decay", "3"),) and choice.median == 1000
    assert choice.overrides == [WD3]
    # the same data with the report seeds pooled in would choose wd 5: the test has teeth
    (leaky,) = fair.select(tune + report[:10]).values()
    assert leaky.setting == (("optimizer.weight_decay", "5"),)

    rep = fair.build_report(tune, report, n_boot=200)
    rows = rep.rows[("a+b mod 97", "mlp")]["adamw"]
    assert rows["tuned"].seeds == REPORT and rows["tuned"].values == [2000] * 5
    assert rows["reference"].setting == () and rows["reference"].values == [4000] * 5
    # a report seed that was a tuning seed is leakage: refused
    with pytest.raises(ValueError, match="report seed 1 .* also a tuning seed"):
        fair.build_report(tune, report + sweep("adamw", [1], [300], WD5))


def test_a_run_that_never_reached_counts_at_the_budget_and_as_a_failure():
    # wd 3: two of three runs never reach 99% (one ran out of budget, one diverged); the one
    # that did is the fastest of all. Dropping failures would pick it; at the budget it loses.
    flaky = sweep("adamw", TUNE, [100, None, None], WD3)
    flaky[2]["status"] = "diverged"
    steady = sweep("adamw", TUNE, [400, 500, 600], WD5)
    cands = fair.candidates(flaky + steady)[("a+b mod 97", "mlp", "adamw")]
    by = {c.setting[0][1]: c for c in cands}
    assert by["3"].values == [100, BUDGET, BUDGET] and by["3"].failures == 2
    assert by["3"].median == BUDGET
    (choice,) = fair.select(flaky + steady).values()
    assert choice.setting == (("optimizer.weight_decay", "5"),)
    # equal medians: fewer failures wins (one failure at the budget vs none)
    a = sweep("adamw", TUNE, [500, 500, None], WD3)
    b = sweep("adamw", TUNE, [500, 500, 900], WD5)
    (choice,) = fair.select(a + b).values()
    assert choice.setting == (("optimizer.weight_decay", "5"),) and choice.failures == 0


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    base, ours = rng.uniform(1500, 3000, 5), rng.uniform(300, 700, 5)
    a = fair.bootstrap_ratio(base, ours, n_boot=10_000, seed=0)
    assert a == fair.bootstrap_ratio(base, ours, n_boot=10_000, seed=0)
    point, lo, hi = a
    assert point == pytest.approx(np.median(base) / np.median(ours))
    assert lo < point < hi and lo > 1.0
    # the resampled ratios can only be ratios of the samples' values
    assert lo >= base.min() / ours.max() and hi <= base.max() / ours.min()
    # no spread in the seeds: no spread in the ratio
    assert fair.bootstrap_ratio([10] * 5, [2] * 5, n_boot=500) == (5.0, 5.0, 5.0)
    # pairing by seed: ours = base / 4 seed by seed gives exactly 4 whatever is resampled
    assert fair.bootstrap_ratio(base, base / 4, paired=True, n_boot=500) == pytest.approx(
        (4.0, 4.0, 4.0)
    )
    with pytest.raises(ValueError, match="paired"):
        fair.bootstrap_ratio([1, 2], [1], paired=True)


def _study():
    """Three methods on the MLP, a grid each on seeds 0-2, reference and tuned on seeds 3-7."""
    ema = "grad_filter.alpha=0.9"
    tune = sweep("adamw", TUNE, [3000, 3100, 2900], "optimizer.weight_decay=1")
    tune += sweep("adamw", TUNE, [1500, 1600, 1400], WD3)
    tune += sweep("adam_ema", TUNE, [900, 950, 1000], ema)
    tune += sweep("adam_ema", TUNE, [800, None, None], "grad_filter.alpha=0.98")
    # groktimizer's best grid point equals its reference values
    tune += sweep("groktimizer", TUNE, [500, 600, 550], "optimizer.weight_decay=1.0")
    tune += sweep("groktimizer", TUNE, [700, 800, 750], WD5)
    report = sweep("adamw", REPORT, [4000, None, 3800, 4100, 3900])  # reference: 1 failure
    report += sweep("adamw", REPORT, [1600, 1500, 1700, 1400, 1650], WD3)
    report += sweep("adam_ema", REPORT, [1200] * 5)
    report += sweep("adam_ema", REPORT, [1000, 1100, 900, 1050, 950], ema)
    report += sweep("groktimizer", REPORT, [400, 500, 450, 550, 600])
    return tune, report


def test_table_has_one_row_per_method_and_role_and_the_speedups(tmp_path):
    tune, report = _study()
    for name, runs in (("tune", tune), ("report", report)):
        for i, r in enumerate(runs):
            runio.write_json(tmp_path / name / str(i) / f"seed_{r['seed']}" / "results.json", r)
    out = tmp_path / "out"
    argv = ["--tune", str(tmp_path / "tune"), "--report", str(tmp_path / "report")]
    assert fair.main([*argv, "--out", str(out), "--n-boot", "2000"]) == 0

    with open(out / "fair.csv") as f:
        rows = list(csv.DictReader(f))
    keys = [(r["method"], r["role"]) for r in rows]
    methods = ["adamw", "adam_ema", "groktimizer"]
    assert keys == list(itertools.product(methods, ["reference", "tuned"]))
    by = {k: r for k, r in zip(keys, rows, strict=True)}
    assert by[("adamw", "tuned")]["setting"] == "optimizer.weight_decay=3"
    assert by[("adamw", "tuned")]["t_gen99_median"] == "1600"
    assert by[("adamw", "reference")]["failures"] == "1"
    assert by[("adamw", "reference")]["t_gen99_median"] == "4000"  # 5 runs, one censored
    # groktimizer's tuned values are its reference: the reference runs serve both rows
    assert by[("groktimizer", "tuned")]["seeds"] == by[("groktimizer", "reference")]["seeds"]
    assert by[("groktimizer", "tuned")]["t_gen99_median"] == "500"

    with open(out / "speedup.csv") as f:
        sp = {(r["baseline"], r["role"]): r for r in csv.DictReader(f)}
    assert set(sp) == set(itertools.product(["adamw", "adam_ema"], ["tuned", "reference"]))
    # ratio of medians, paired by seed; adamw's reference failure counted at the budget
    assert float(sp[("adamw", "tuned")]["speedup"]) == pytest.approx(1600 / 500, rel=1e-3)
    assert float(sp[("adamw", "reference")]["speedup"]) == pytest.approx(4000 / 500, rel=1e-3)
    assert sp[("adamw", "reference")]["lower_bound"] == "True"
    for r in sp.values():
        assert float(r["low"]) <= float(r["speedup"]) <= float(r["high"])
        assert r["paired"] == "True"

    md = (out / "fair.md").read_text()
    assert "sooner than the best-tuned AdamW" in md and "gradient filter (adam_ema)" in md
    assert "| adamw | optimizer.weight_decay=3 | 1500 | 0/3 | ✓ |" in md
    assert "| adam_ema | grad_filter.alpha=0.98 | 6000 | 2/3 |  |" in md
    selection = json.loads((out / "selection.json").read_text())
    assert {s["method"]: s["overrides"] for s in selection}["adam_ema"] == ["grad_filter.alpha=0.9"]
    assert (out / "fair_mlp_a_b_mod_97.png").stat().st_size > 0


def _grid(overrides: list[str]) -> dict[str, list[str]]:
    return {o.split("=")[0]: o.split("=")[1].split(",") for o in overrides}


def test_every_full_fair_grid_has_the_same_size_and_holds_its_reference_point(compose):
    grids = fair_driver().GRIDS["full"]
    assert set(grids) >= set(fair_driver().METHODS["mlp"])
    for method, overrides in grids.items():
        grid = _grid(overrides)
        assert math.prod(len(v) for v in grid.values()) == 8, method
        cfg = compose(f"+experiment=fair_{method}", "model=transformer")
        assert cfg.trainer.max_steps == 6000 and list(cfg.trainer.seeds) == [0, 1, 2]
        for key, values in grid.items():
            group, name = key.split(".")
            ref = cfg[group][name]
            assert any(float(v) == pytest.approx(float(ref)) for v in values), (method, key)


def fair_driver():
    spec = importlib.util.spec_from_file_location("fair_driver", ROOT / "scripts" / "fair.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fair_driver", mod)
    spec.loader.exec_module(mod)
    return mod


def test_driver_tunes_and_reports_on_disjoint_seeds_with_the_selected_overrides():
    d = fair_driver()
    tune = d.tune_command("adam_ema", "transformer", "full", "joblib")
    assert tune[2:5] == ["-m", "+experiment=fair_adam_ema", "model=transformer"]
    assert "trainer.seeds=[0,1,2]" in tune and "launcher=joblib" in tune
    chosen = ["grad_filter.alpha=0.9", "optimizer.weight_decay=0.02"]
    rep = d.report_command("adam_ema", "transformer", "full", chosen)
    assert "-m" not in rep and rep[4:6] == chosen and "trainer.seeds=[3,4,5,6,7]" in rep
    assert rep[-1].endswith("transformer/report/adam_ema/tuned")
    ref = d.report_command("adam_ema", "transformer", "full")
    assert not any(o.startswith(("grad_filter.", "optimizer.")) for o in ref)
    assert ref[-1].endswith("report/adam_ema/reference")
    for scale in ("smoke", "cpu", "full"):
        assert not set(d.TUNE_SEEDS[scale]) & set(d.REPORT_SEEDS[scale])


@pytest.mark.parametrize("scale", ["smoke", "cpu"])
def test_cut_grids_hold_each_methods_reference_point(compose, scale):
    """A cut grid that missed the reference setting would make 'tuned' worse than 'reference'."""
    from omegaconf import OmegaConf

    d = fair_driver()
    for method, grid in d.GRIDS[scale].items():
        cfg = compose(f"+experiment=fair_{method}", "model=mlp")
        for override in grid:
            key, values = override.split("=")
            ref = OmegaConf.select(cfg, key)
            assert any(float(v) == float(ref) for v in values.split(",")), (method, key, ref)


@pytest.mark.slow
def test_driver_end_to_end_tune_select_report_table(tmp_path):
    """scripts/fair.py on a tiny task: tuning multirun -> selection -> report runs -> table."""
    import subprocess

    cmd = [sys.executable, str(ROOT / "scripts" / "fair.py"), "--scale", "smoke"]
    cmd += ["--models", "mlp", "--methods", "adamw,groktimizer", "--outputs", str(tmp_path)]
    cmd += ["--", "dataset.p=11", "trainer.max_steps=30"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tune = sorted(p.parent.name for p in (tmp_path / "multiruns").rglob("tune/*/*/seed_0"))
    assert len(tune) == 4 and all("trainer.max_steps=30" in t for t in tune)
    report = tmp_path / "multiruns" / "fair" / "smoke" / "mlp" / "report"
    # report runs hold only the report seed, never a tuning seed
    assert {p.parent.name for p in report.rglob("results.json")} == {"seed_1"}
    out = tmp_path / "results" / "smoke" / "fair" / "mlp"
    with open(out / "fair.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["role"]) for r in rows] == list(
        itertools.product(["adamw", "groktimizer"], ["reference", "tuned"])
    )
    assert all(r["task"] == "a+b mod 11" and r["n"] == "1" and r["seeds"] == "1" for r in rows)
    selection = {s["method"]: s for s in json.loads((out / "selection.json").read_text())}
    assert selection["groktimizer"]["seeds"] == [0] and selection["adamw"]["seeds"] == [0]
    # the tuned row was run with the overrides chosen on the tuning seed
    tuned = json.loads(
        next((report / "groktimizer").rglob("tuned/seed_1/results.json")).read_text()
    )
    assert set(selection["groktimizer"]["overrides"]) <= set(tuned["overrides"])
    assert "-- dataset.p=11 trainer.max_steps=30" in (out / "fair.md").read_text()
