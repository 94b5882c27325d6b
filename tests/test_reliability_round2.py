"""Reliability, round 2: no mixed or lost runs, sweeps that survive bad jobs, one run per
directory, every value validated. Each test fails on the code before these fixes."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from groktimizer.analysis import tables
from groktimizer.experiment import cli, config, runio
from groktimizer.experiment.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["trainer=smoke", "optimizer=cdm", "dataset.p=7", "model.width=16", "model.embed_dim=8"]


def _cli(cfg, run_dir: Path, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        cli.run(cfg, str(run_dir))
    return exc.value.code, capsys.readouterr().err


def _steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in runio.MetricsLog(run_dir / runio.METRICS).read()]


# 1 -- a fresh start starts clean
def test_resume_false_into_a_used_directory_moves_the_old_run_aside(compose, tmp_path):
    Trainer(compose(*TINY, "trainer.max_steps=40"), tmp_path).train()
    old = (tmp_path / runio.RESULTS).read_text()
    (res,) = Trainer(
        compose(*TINY, "trainer.max_steps=20", "trainer.resume=false", "optimizer.lr=0.5"),
        tmp_path,
    ).train()
    assert _steps(tmp_path) == [0, 10, 20]  # the new run's rows only, never appended
    assert res["steps"] == 20
    (moved,) = (tmp_path / runio.SUPERSEDED).iterdir()
    assert (moved / runio.RESULTS).read_text() == old
    assert [r["step"] for r in runio.MetricsLog(moved / runio.METRICS).read()] == [
        0,
        10,
        20,
        30,
        40,
    ]
    # the table builder sees one run here, not the superseded one
    assert len(tables.load_runs(tmp_path)) == 1


def test_metrics_without_a_checkpoint_are_not_appended_to(compose, tmp_path):
    """A run killed before its first checkpoint leaves metrics.jsonl: a restart starts clean."""
    log = runio.MetricsLog(tmp_path / runio.METRICS)
    for s in (0, 10, 20, 30):
        log.append({"step": s, "train_loss": 9.0})
    Trainer(compose(*TINY, "trainer.max_steps=20"), tmp_path).train()
    assert _steps(tmp_path) == [0, 10, 20]


# 2 -- a bad job does not stop a sweep
@pytest.mark.slow
def test_a_bad_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *TINY[1:], "trainer=smoke"]
    cmd += ["dataset.p=7,1,11", f"hydra.sweep.dir={sweep}", "trainer.threads=1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "1 job(s) of the sweep were invalid" in p.stderr
    runs = {r["config"]["dataset"]["p"]: r for r in tables.load_runs(sweep)}
    assert sorted(runs) == [1, 7, 11]  # the job after the bad one ran
    assert runs[1]["status"] == "invalid" and "Invalid p: 1" in runs[1]["message"]
    assert runs[11]["status"] in ("completed", "reached-target")
    summary = tables.summarize(list(runs.values()), ["t_gen99"])
    assert summary["invalid"] == 1 and summary["n"] == 3


# 3 -- one run per directory
def test_a_second_run_in_a_locked_directory_is_refused_naming_the_holder(compose, tmp_path, capsys):
    holder = runio.RunLock(tmp_path)
    holder.acquire()
    try:
        code, err = _cli(compose(*TINY), tmp_path, capsys)
    finally:
        holder.release()
    assert code == 2 and err.count("\n") == 1
    assert "is in use by pid" in err and str(os.getpid()) in err
    assert not (tmp_path / runio.METRICS).exists()
    # released: the directory is usable again
    (res,) = Trainer(compose(*TINY), tmp_path).train()
    assert res["status"] in ("completed", "reached-target")


# 4 -- a failed write never contradicts
def test_disk_full_at_the_final_checkpoint_leaves_consistent_files(
    compose, tmp_path, capsys, monkeypatch
):
    real = runio.save_checkpoint
    seen = []

    def full_at_the_end(path, obj):
        seen.append(obj["step"])
        if obj["step"] == 60:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, obj)

    from groktimizer.experiment import trainer as trainer_module

    monkeypatch.setattr(trainer_module.runio, "save_checkpoint", full_at_the_end)
    code, err = _cli(compose(*TINY, "trainer.stop_at_target=false"), tmp_path, capsys)
    assert code == 1 and err.count("\n") == 1 and "No space left on device" in err
    ckpt = runio.load_checkpoint(tmp_path / runio.CHECKPOINT)
    assert ckpt["step"] == 30 and ckpt["members"][0]["tracker"]["status"] == "running"
    # results.json must not claim a finished run the checkpoint does not hold
    assert not (tmp_path / runio.RESULTS).exists()
    monkeypatch.setattr(trainer_module.runio, "save_checkpoint", real)
    (res,) = Trainer(compose(*TINY, "trainer.stop_at_target=false"), tmp_path).train()
    assert res["status"] == "completed" and _steps(tmp_path) == [0, 10, 20, 30, 40, 50, 60]


# 5 -- a damaged metrics log
@pytest.mark.parametrize("garbage", ["42", '{"foo": 1}', "not json at all", '{"step": "x"}'])
def test_resume_keeps_every_valid_row_of_a_damaged_log(compose, tmp_path, capsys, garbage):
    cfg = compose(*TINY, "trainer.max_steps=30", "trainer.stop_at_target=false")
    Trainer(cfg, tmp_path).train()
    lines = (tmp_path / runio.METRICS).read_text().splitlines()
    lines.insert(2, garbage)  # in the middle: the valid rows after it must survive
    (tmp_path / runio.METRICS).write_text("\n".join(lines) + "\n")
    cfg = compose(*TINY, "trainer.max_steps=50", "trainer.stop_at_target=false")
    (res,) = Trainer(cfg, tmp_path).train()
    assert res["status"] == "completed"
    assert _steps(tmp_path) == [0, 10, 20, 30, 40, 50]
    assert "skipped 1 damaged line(s) (line 3)" in capsys.readouterr().err


def test_resume_rebuilds_a_truncated_log_from_the_checkpoint(compose, tmp_path, capsys):
    cfg = compose(*TINY, "trainer.max_steps=30", "trainer.stop_at_target=false")
    Trainer(cfg, tmp_path).train()
    text = (tmp_path / runio.METRICS).read_text()
    (tmp_path / runio.METRICS).write_text(text[: len(text) // 3])  # cut mid-file
    cfg = compose(*TINY, "trainer.max_steps=40", "trainer.stop_at_target=false")
    Trainer(cfg, tmp_path).train()
    assert _steps(tmp_path) == [0, 10, 20, 30, 40]
    assert "rebuilt from the checkpoint" in capsys.readouterr().err


# 6 -- budgets on resume
def test_raising_max_steps_on_a_finished_run_trains_on(compose, tmp_path):
    cfg = compose(*TINY, "trainer.max_steps=30", "trainer.stop_at_target=false")
    (first,) = Trainer(cfg, tmp_path).train()
    assert first["status"] == "completed" and first["steps"] == 30
    cfg = compose(*TINY, "trainer.max_steps=60", "trainer.stop_at_target=false")
    (more,) = Trainer(cfg, tmp_path).train()
    assert more["status"] == "completed" and more["steps"] == 60 and more["max_steps"] == 60
    assert _steps(tmp_path) == [0, 10, 20, 30, 40, 50, 60]


def test_a_budget_below_the_checkpoint_is_an_error(compose, tmp_path, capsys):
    cfg = compose(*TINY, "trainer.max_steps=60", "trainer.stop_at_target=false")
    Trainer(cfg, tmp_path).train()
    before = (tmp_path / runio.RESULTS).read_text()
    code, err = _cli(compose(*TINY, "trainer.max_steps=30"), tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "trainer.max_steps=30 is below the step" in err and "(60)" in err
    assert (tmp_path / runio.RESULTS).read_text() == before


# 7 -- every value validated
def test_every_field_of_the_checked_schemas_has_a_check():
    """A new trainer / logger / top-level field cannot skip validation."""
    for schema, checks in (
        (config.TrainerConfig, config.TRAINER_CHECKS),
        (config.LoggerConfig, config.LOGGER_CHECKS),
    ):
        assert {f.name for f in dataclasses.fields(schema)} == set(checks), schema.__name__
    groups = {"dataset", "model", "optimizer", "schedule", "grad_filter", "guard"}
    sections = {"trainer", "logger"}
    top = {f.name for f in dataclasses.fields(config.TrainConfig)} - groups - sections
    assert top == set(config.TOP_CHECKS)


def _schema_fields():
    """(override prefix, dataset/model pairing, field) for every dataset and model schema field."""
    pair = {
        "modular_schema": ["dataset=modular", "model=mlp"],
        "sparse_parity_schema": ["dataset=sparse_parity", "model=mlp"],
        "linear_regression_schema": ["dataset=linear_regression", "model=linear"],
        "digits_schema": ["dataset=digits", "model=mlp"],
        "mlp_schema": ["model=mlp"],
        "transformer_schema": ["model=transformer"],
        "linear_schema": ["dataset=digits", "model=linear"],
    }
    out = []
    for group in ("dataset", "model"):
        for name, schema in config._SCHEMAS[group].items():
            if name not in pair:  # mnist: its loader is tested in test_data with local files
                continue
            for f in dataclasses.fields(schema):
                t = str(f.type)
                if f.name.startswith("_") or "bool" in t or "str" in t:
                    continue
                bad = "-7" if "int" in t else "nan"
                out.append(
                    pytest.param(pair[name], f"{group}.{f.name}={bad}", id=f"{name}.{f.name}")
                )
    return out


@pytest.mark.parametrize("pairing,override", _schema_fields())
def test_every_numeric_dataset_and_model_field_refuses_a_bad_value(
    compose, tmp_path, capsys, pairing, override
):
    code, err = _cli(
        compose("trainer=smoke", "optimizer=cdm", *pairing, override), tmp_path, capsys
    )
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["trainer.grad_clip=-1"], "trainer.grad_clip=-1"),
        (["trainer.max_loss=-1"], "trainer.max_loss=-1"),
        (["model.init_scale=nan"], "init_scale: nan"),
        (["trainer.sharpness_iters=-3"], "trainer.sharpness_iters=-3"),
        (["trainer.max_steps=" + "9" * 400], "trainer.max_steps="),
        (["seed=" + "9" * 30], "seed="),
        (["dataset.p=1000003"], "Invalid p: 1000003"),
        (["experiment_name=" + "x" * 300], "experiment_name="),
    ],
    ids=lambda x: x[0][:30] if isinstance(x, list) else None,
)
def test_values_once_accepted_are_refused_up_front(compose, tmp_path, capsys, overrides, needle):
    code, err = _cli(compose(*TINY, *overrides), tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert not list(tmp_path.iterdir())


# 8, 9 -- one line, never a traceback
@pytest.mark.parametrize(
    "content", [torch.zeros(3), {}, {"step": 5}], ids=["bare-tensor", "empty-dict", "no-members"]
)
def test_a_foreign_checkpoint_is_one_line(compose, tmp_path, capsys, content):
    torch.save(content, tmp_path / runio.CHECKPOINT)
    code, err = _cli(compose(*TINY), tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and "not a GROKtimizer run checkpoint" in err


def test_random_bytes_checkpoint_is_called_damaged_never_unsafe(compose, tmp_path, capsys):
    (tmp_path / runio.CHECKPOINT).write_bytes(os.urandom(4096))
    code, err = _cli(compose(*TINY), tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "damaged or not a GROKtimizer checkpoint" in err
    assert "weights_only" not in err and "will likely succeed" not in err


@pytest.mark.slow
@pytest.mark.parametrize("where", ["file", "read-only"])
def test_an_unusable_run_directory_is_one_line(tmp_path, where):
    target = tmp_path / "run"
    if where == "file":
        target.write_text("not a directory")
    else:
        target.mkdir()
        target.chmod(0o500)
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY, f"hydra.run.dir={target}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    target.chmod(0o700) if where != "file" else None
    if where == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    assert p.returncode == 2, p.stderr[-1500:]
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr
    assert "Traceback" not in p.stderr


def test_invalid_job_record_never_overwrites_another_runs_results(compose, tmp_path, capsys):
    """A multirun job refused because its folder holds another run keeps that run's files."""
    (tmp_path / runio.RESULTS).write_text(json.dumps({"status": "completed"}))
    monkey = cli._in_multirun
    cli._in_multirun = lambda: True
    try:
        cli.run(compose(*TINY, "dataset.p=1"), str(tmp_path))
    finally:
        cli._in_multirun = monkey
        cli.INVALID_JOBS.clear()
    assert json.loads((tmp_path / runio.RESULTS).read_text()) == {"status": "completed"}


# the whole story ------------------------------------------------------------------------------
FAULTS = """
import errno, os, runpy, signal, sys
from groktimizer.experiment import runio
from groktimizer.experiment import trainer as T

kill_at = int(os.environ.get("FAULT_KILL_AT_STEP", "-1"))
full_for = os.environ.get("FAULT_DISK_FULL_FOR", "")  # a job folder name part
_fb = T.Trainer._forward_backward
def forward_backward(self, members):
    if self.step == kill_at and "dataset.p=7" in str(self.run_dir):
        os.kill(os.getpid(), signal.SIGKILL)
    return _fb(self, members)
T.Trainer._forward_backward = forward_backward
_save = runio.save_checkpoint
def save_checkpoint(path, obj):
    if full_for and full_for in str(path) and obj["step"] >= 40:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return _save(path, obj)
runio.save_checkpoint = save_checkpoint
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_fault_injected_sweep_keeps_every_good_result_and_records_every_failure(tmp_path):
    """kill -9 mid-job, a bad job, a full disk: after re-running the sweep, every good job's
    results are whole (no duplicate or lost rows) and every failure was recorded."""
    driver = tmp_path / "faults.py"
    driver.write_text(FAULTS)
    sweep = tmp_path / "sweep"
    args = [*TINY[1:-3], "trainer=smoke", "trainer.stop_at_target=false", "model.width=16"]
    args += ["trainer.checkpoint_every=20", "dataset.p=7,1,11", f"hydra.sweep.dir={sweep}"]

    def run(**faults):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAULT_", "HYDRA_"))}
        env.update(faults)
        cmd = [sys.executable, str(driver), str(ROOT / "train.py"), "-m", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)

    killed = run(FAULT_KILL_AT_STEP="35")  # the first job is killed -9 after its step-20 checkpoint
    assert killed.returncode == -9
    full = run(FAULT_DISK_FULL_FOR="dataset.p=11")  # resumes p=7; p=1 invalid; p=11 disk full
    assert full.returncode == 2, full.stderr[-2000:]
    assert (
        "No space left on device" in full.stderr
        and "1 job(s) of the sweep were invalid" in full.stderr
    )
    final = run()  # room again: p=11 resumes from its last good checkpoint
    assert final.returncode == 2  # the invalid job is still invalid, and says so
    runs = {r["config"]["dataset"]["p"]: r for r in tables.load_runs(sweep)}
    assert runs[1]["status"] == "invalid"
    for p in (7, 11):
        assert runs[p]["status"] == "completed", runs[p]["message"]
        job = Path(runs[p]["_path"]).parent
        assert _steps(job) == [0, 10, 20, 30, 40, 50, 60], p
    summary = tables.summarize(list(runs.values()), ["t_gen99"])
    assert (summary["n"], summary["invalid"], summary["incomplete"]) == (3, 1, 0)
