"""Sweeps as batches: each member of a batched group writes what its plain job writes.

In-process: the jobs of a tiny grid (two optimizer settings x two seeds, 40 steps) are trained
once as plain Trainers and once as one :class:`BatchedGroup`; every ``metrics.jsonl`` row and
every ``results.json`` field must agree (numbers within 1e-5 relative), for each optimizer the
batch implements and across the switch, and a batched run resumes from its own checkpoints.
The slow test runs the sweep through ``train.py -m launcher=batched`` against the plain launcher
and builds the same table from both.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from groktimizer.experiment.batched_sweep import (
    BatchedGroup,
    batchable,
    group_key,
    plan,
    train_group,
)
from groktimizer.experiment.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "trainer=smoke",
    "trainer.threads=1",
    "trainer.max_steps=40",
    "trainer.eval_every=5",
    "trainer.checkpoint_every=20",
    "trainer.seeds=[0,1]",
    "dataset.p=23",
    "model.width=32",
    "model.embed_dim=8",
]
SWITCH = ["schedule=at_step", "schedule.switch.step=15"]
# method overrides, then the two grid points (jobs) of each case
CASES = {
    "cdm_switch": (
        ["method=groktimizer_cdm", *SWITCH],
        ["optimizer.weight_decay=1e-3", "optimizer.weight_decay=1e-2 optimizer.damping=0.5"],
    ),
    "adam_cdm_switch": (
        ["method=groktimizer_cdm", "optimizer=adam_cdm", *SWITCH],
        ["optimizer.lr=2e-4", "optimizer.lr=1e-4 schedule.phase1.lr=3e-3"],
    ),
    "adamw": (["method=adamw"], ["optimizer.lr=1e-3", "optimizer.lr=3e-3"]),
    "adam_ema": (["method=adam_ema"], ["grad_filter.lamb=2.0", "grad_filter.alpha=0.9"]),
    "adam_ma": (
        ["method=adam_ma", "grad_filter.window=8"],
        ["grad_filter.lamb=5.0", "grad_filter.lamb=1.0 optimizer.lr=2e-3"],
    ),
}
TOL = 1e-5


def _close(a, b, where: str) -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), where
        if math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), where
            return
        assert abs(a - b) <= TOL * max(abs(a), abs(b), 1e-3), f"{where}: {a} vs {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _results(path: Path) -> dict:
    res = json.loads(path.read_text())
    res.pop("wall_time_s")  # the one field that may differ, besides the launcher chosen
    res.get("choices", {}).pop("launcher", None)
    res["overrides"] = [o for o in res.get("overrides", []) if not o.startswith("launcher=")]
    return res


def assert_same_runs(plain: Path, batched: Path) -> int:
    """Every member folder of `plain` has a twin in `batched` with the same rows and results."""
    files = sorted(p.relative_to(plain) for p in plain.rglob("results.json"))
    assert files, f"no results under {plain}"
    assert files == sorted(p.relative_to(batched) for p in batched.rglob("results.json"))
    for rel in files:
        d = rel.parent
        _close(_rows(plain / d / "metrics.jsonl"), _rows(batched / d / "metrics.jsonl"), str(d))
        _close(_results(plain / rel), _results(batched / rel), str(rel))
        assert (plain / d / "config.yaml").read_text() == (batched / d / "config.yaml").read_text()
    return len(files)


def _trainers(compose, base: list[str], jobs: list[str], root: Path, *extra: str) -> list:
    return [
        Trainer(compose(*TINY, *base, *job.split(), *extra), root / f"job{i}")
        for i, job in enumerate(jobs)
    ]


@pytest.mark.parametrize("case", sorted(CASES))
def test_batched_members_write_what_their_plain_runs_write(compose, tmp_path, case):
    base, jobs = CASES[case]
    for t in _trainers(compose, base, jobs, tmp_path / "plain"):
        t.train()
    trainers = _trainers(compose, base, jobs, tmp_path / "batched")
    group = BatchedGroup(trainers)
    assert len(group.pairs) == 4 and not group.vmap
    group.train()
    assert assert_same_runs(tmp_path / "plain", tmp_path / "batched") == 4
    if "switch" in case:
        res = json.loads((tmp_path / "batched/job1/seed_0/results.json").read_text())
        assert res["t_switch"] == 15 and res["events"][0]["event"] == "switch"


def test_batched_vmap_forward_matches_plain(compose, tmp_path):
    base, jobs = CASES["adam_cdm_switch"]
    for t in _trainers(compose, base, jobs, tmp_path / "plain", "trainer.ensemble=vmap"):
        t.train()
    trainers = _trainers(compose, base, jobs, tmp_path / "batched", "trainer.ensemble=vmap")
    group = BatchedGroup(trainers)
    assert group.vmap
    group.train()
    assert assert_same_runs(tmp_path / "plain", tmp_path / "batched") == 4


def test_batched_run_resumes_from_its_own_checkpoints(compose, tmp_path):
    base, jobs = CASES["cdm_switch"]
    for t in _trainers(compose, base, jobs, tmp_path / "plain"):
        t.train()
    # 20 steps, then the budget raised to 40: each member continues from its own checkpoint
    BatchedGroup(
        _trainers(compose, base, jobs, tmp_path / "batched", "trainer.max_steps=20")
    ).train()
    resumed = _trainers(compose, base, jobs, tmp_path / "batched")
    for t in resumed:
        t.batched_member = True
    assert all(t.check_resume()["step"] == 20 for t in resumed)
    BatchedGroup(resumed).train()
    assert assert_same_runs(tmp_path / "plain", tmp_path / "batched") == 4


def test_a_group_the_batch_cannot_express_runs_job_by_job(compose, tmp_path):
    # MA filters of different windows cannot share one batch: each job runs as a plain Trainer
    base, _ = CASES["adam_ma"]
    jobs = ["grad_filter.window=8", "grad_filter.window=4"]
    for t in _trainers(compose, base, jobs, tmp_path / "plain"):
        t.train()
    out = train_group(_trainers(compose, base, jobs, tmp_path / "batched"))
    assert [len(r) for r in out] == [2, 2]
    assert assert_same_runs(tmp_path / "plain", tmp_path / "batched") == 4


def test_a_plain_checkpoint_is_refused_in_one_line(compose, tmp_path):
    base, jobs = CASES["adamw"]
    for t in _trainers(compose, base, jobs, tmp_path, "trainer.max_steps=20"):
        t.train()
    with pytest.raises(ValueError, match="not a batched member's"):
        BatchedGroup(_trainers(compose, base, jobs, tmp_path)).train()


def test_a_plain_run_refuses_a_batched_checkpoint_in_one_line(compose, tmp_path):
    base, jobs = CASES["adamw"]
    BatchedGroup(_trainers(compose, base, jobs, tmp_path, "trainer.max_steps=20")).train()
    plain = _trainers(compose, base, jobs[:1], tmp_path)[0]
    with pytest.raises(ValueError, match="written by a batched sweep") as err:
        plain.prepare()
    assert "\n" not in str(err.value) and "launcher=batched" in str(err.value)


def test_grouping_keeps_apart_jobs_that_differ_beyond_optimizer_values():
    def cfg(**kw):
        c = {
            "seed": 0,
            "dataset": {"p": 97},
            "trainer": {"seeds": [0, 1], "max_steps": 10},
            "optimizer": {"_target_": "groktimizer.CDM", "lr": 1.0, "damping": 1.0},
            "schedule": {"_target_": "groktimizer.GROKtimizer", "phase1": {"lr": 1e-3}},
        }
        for k, v in kw.items():
            node = c
            *path, last = k.split("__")
            for p in path:
                node = node[p]
            node[last] = v
        return c

    assert batchable("optimizer.damping") and batchable("schedule.phase1.lr")
    assert batchable("trainer.seeds") and not batchable("optimizer._target_")
    assert not batchable("trainer.max_steps") and not batchable("dataset.p")
    same = [cfg(), cfg(optimizer__lr=0.5), cfg(schedule__phase1__lr=3e-3, seed=1)]
    assert len({group_key(c) for c in same}) == 1
    configs = [
        cfg(),
        cfg(optimizer__damping=0.5),
        cfg(dataset__p=113),  # another task: its own group
        cfg(optimizer___target_="torch.optim.AdamW"),  # another class: its own group
        None,  # did not resolve: alone
        cfg(optimizer__lr=0.3),
    ]
    assert plan(configs) == [[0, 1, 5], [2], [3], [4]]
    # at most 4 members (2 seeds per job) per batch
    assert plan(configs, max_members=4) == [[0, 1], [2], [3], [4], [5]]


def _sweep(tmp: Path, launcher: list[str]) -> subprocess.CompletedProcess:
    base, _ = CASES["adam_cdm_switch"]
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        *TINY,
        *base,
        "optimizer.damping=0.5,1",
        f"hydra.sweep.dir={tmp}",
        *launcher,
    ]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_sweep_batched_through_the_launcher_equals_the_plain_sweep(tmp_path):
    from groktimizer.analysis.tables import build

    plain = _sweep(tmp_path / "plain", [])
    assert plain.returncode == 0, plain.stderr[-2000:]
    batched = _sweep(tmp_path / "batched", ["launcher=batched"])
    assert batched.returncode == 0, batched.stderr[-2000:]
    assert "2 job(s), 4 members in one batch" in batched.stderr + batched.stdout
    assert assert_same_runs(tmp_path / "plain", tmp_path / "batched") == 4
    for d in ("plain", "batched"):  # the job folders hold Hydra's files as a plain job's do
        assert len(list((tmp_path / d).glob("*/.hydra/overrides.yaml"))) == 2
    tables = {}
    for d in ("plain", "batched"):
        tab = build([tmp_path / d], "table3", tmp_path / f"tables_{d}", figure=False)
        tables[d] = [{k: v for k, v in r.items() if "wall" not in k} for r in tab.csv_rows()]
    assert tables["plain"] == tables["batched"] and len(tables["plain"]) == 2
