"""Seed ensembles: each member of `trainer.seeds=[...]` writes what its single run writes."""

import math

import pytest

from groktimizer.experiment import runio
from groktimizer.experiment.trainer import Trainer

SEEDS = [0, 1, 2]
# digits, because its validation accuracy climbs within a few dozen steps: with target 0.9,
# seed 2 reaches it at step 45 while seeds 0 and 1 plateau near 0.87 and use the whole budget
TINY = [
    "dataset=digits",
    "dataset.n_train=100",
    "model.width=32",
    "schedule.phase1.lr=0.01",
    "schedule=at_step",
    "schedule.switch.step=30",
    "optimizer=cdm",  # pinned: the default phase 2 may change
    "optimizer.lr=0.1",
    "trainer.max_steps=60",
    "trainer.eval_every=5",
    "trainer.target_val_acc=0.9",
    "trainer.plots=false",
    "trainer.progress=false",
    "trainer.device=cpu",
]
# differ by construction: timing, and the ensemble's own seeds list in the recorded config
SKIP = ("wall_time_s", "code")


def _close(a, b, path="") -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), path
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _comparable(res: dict) -> dict:
    res = {k: v for k, v in res.items() if k not in SKIP}
    trainer = dict(res["config"]["trainer"])
    trainer.pop("seeds")
    trainer.pop("ensemble")
    res["config"] = {**res["config"], "trainer": trainer}
    return res


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
    from conftest import ROOT
    from hydra import compose, initialize_config_dir

    from groktimizer.experiment.config import register_configs

    register_configs()
    out = {}
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        for s in SEEDS:
            run = tmp_path_factory.mktemp(f"single_{s}")
            Trainer(compose(config_name="train", overrides=[*TINY, f"seed={s}"]), run).train()
            out[s] = (
                runio.MetricsLog(run / runio.METRICS).read(),
                runio.read_json(run / runio.RESULTS),
            )
    return out


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_members_match_single_runs(compose, tmp_path, single_runs, mode):
    cfg = compose(*TINY, "trainer.seeds=[0,1,2]", f"trainer.ensemble={mode}")
    results = Trainer(cfg, tmp_path).train()
    assert [r["seed"] for r in results] == SEEDS
    for s in SEEDS:
        member = tmp_path / f"seed_{s}"
        rows = runio.MetricsLog(member / runio.METRICS).read()
        res = runio.read_json(member / runio.RESULTS)
        rows_1, res_1 = single_runs[s]
        assert [r["step"] for r in rows] == [r["step"] for r in rows_1]
        _close(rows, rows_1, f"seed {s} metrics")
        _close(_comparable(res), _comparable(res_1), f"seed {s} results")
        assert res["config"]["seed"] == s
        assert res["t_switch"] == 30  # every member switched to CDM

    # the member that reached the target stopped there; the others used the whole budget
    by_seed = {r["seed"]: r for r in results}
    assert by_seed[2]["status"] == "reached-target" and by_seed[2]["steps"] == 45
    assert [by_seed[s]["status"] for s in (0, 1)] == ["completed", "completed"]
    assert [by_seed[s]["steps"] for s in (0, 1)] == [60, 60]
    assert not (tmp_path / runio.RESULTS).exists()  # members write only in their own dirs


@pytest.mark.parametrize("seeds", [None, "[0,1]"])
def test_target_reached_at_initialisation_still_writes_results(compose, tmp_path, seeds):
    extra = [f"trainer.seeds={seeds}"] if seeds else []
    cfg = compose(*TINY, "trainer.target_val_acc=0.001", *extra)
    results = Trainer(cfg, tmp_path).train()
    dirs = [tmp_path] if seeds is None else [tmp_path / "seed_0", tmp_path / "seed_1"]
    for res, d in zip(results, dirs, strict=True):
        saved = runio.read_json(d / runio.RESULTS)
        assert saved["status"] == res["status"] == "reached-target"
        assert saved["steps"] == 0 and saved["t_target"] == 0
