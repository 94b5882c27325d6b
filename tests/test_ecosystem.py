"""Ecosystem: no silent traps; W&B, logging and Optuna as their users expect."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wandb_files

from groktimizer.analysis import tables
from groktimizer.experiment import cli, outputs, runio
from groktimizer.experiment.config import ConfigError, validate
from groktimizer.experiment.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["trainer=smoke", "dataset.p=7", "model.width=16", "model.embed_dim=8"]


def _train(*args: str, env: dict | None = None, timeout: int = 300, driver: str | None = None):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "WANDB_"))}
    full.update({"WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", **(env or {})})
    cmd = [sys.executable, *([driver] if driver else []), str(ROOT / "train.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=full)


# trap 1 ------------------------------------------------------------------ the method is the choice
def test_a_baseline_optimizer_under_the_biphasic_schedule_is_refused(compose):
    with pytest.raises(ConfigError, match="method=adamw"):
        validate(compose("optimizer=adamw"))
    cfg = compose("method=adamw")
    validate(cfg)
    assert cfg.schedule._target_ is None and cfg.optimizer._target_ == "torch.optim.AdamW"
    validate(compose("optimizer=adamw", "allow_any_phase2=true"))  # said explicitly: allowed


# trap 4 ------------------------------------------------------------------ files follow the umask
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_output_files_follow_the_umask(compose, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        Trainer(compose(*TINY, "trainer.max_steps=10"), tmp_path).train()
    finally:
        os.umask(old)
    for name in (runio.RESULTS, runio.CONFIG, runio.CHECKPOINT, runio.METRICS):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


# W&B ------------------------------------------------------------------
def test_wandb_run_names_tell_the_jobs_of_a_sweep_apart():
    over = ["optimizer.damping=0.5", "seed=3", "trainer.progress=false", "+experiment=x"]
    assert outputs.run_name("exp", over, 3) == "exp-optimizer.damping=0.5-experiment=x-s3"
    assert outputs.run_name("exp", [], 0) == "exp-s0"


FAULT = """
import os, runpy, signal, sys
from groktimizer.experiment import trainer as T
kill_at = int(os.environ["FAULT_TERM_AT_STEP"])
_fb = T.Trainer._forward_backward
def fb(self, members):
    if self.step == kill_at:
        os.kill(os.getpid(), signal.SIGTERM)
    return _fb(self, members)
T.Trainer._forward_backward = fb
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_wandb_offline_run_survives_preemption_as_one_run(tmp_path):
    driver = tmp_path / "term.py"
    driver.write_text(FAULT)
    run = tmp_path / "run"
    args = [*TINY, "logger=wandb", "trainer.stop_at_target=false", f"hydra.run.dir={run}"]
    first = _train(*args, env={"FAULT_TERM_AT_STEP": "35"}, driver=str(driver))
    assert first.returncode == 143, first.stderr[-2000:]
    second = _train(*args)
    assert second.returncode == 0, second.stderr[-2000:]
    run_id = (run / "wandb_run_id").read_text().strip()
    parts = sorted(run.glob("wandb/offline-run-*"))
    assert len(parts) == 2 and all(p.name.endswith(run_id) for p in parts)  # one W&B run id
    steps = []
    for part in parts:
        (f,) = part.glob("run-*.wandb")
        for _ in range(50):
            rows = [r for r in wandb_files.history(f) if "val_acc" in r]
            if rows:
                break
            time.sleep(0.2)
        steps += [r["_step"] for r in rows]
    assert set(steps) >= {0, 10, 20, 30, 40, 50, 60}  # both parts' metrics, under one id
    assert "wandb sync" in second.stderr and run_id in second.stderr


@pytest.mark.slow
def test_unreachable_wandb_costs_one_wait_and_one_warning_per_job(tmp_path):
    run = tmp_path / "run"
    env = {"WANDB_API_KEY": "f" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    p = _train(
        *TINY, "logger=wandb", "logger.mode=online", "trainer.seeds=[0,1,2]",
        f"hydra.run.dir={run}", env=env,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stderr.count("online init failed") == 1, p.stderr
    assert len(list(run.glob("seed_*/wandb/offline-run-*"))) == 3


# logging ------------------------------------------------------------------
@pytest.mark.slow
def test_train_log_holds_progress_and_summary_lines(tmp_path):
    run = tmp_path / "run"
    p = _train(
        *TINY, "trainer.stop_at_target=false", "trainer.print_config=true",
        "trainer.progress=true", f"hydra.run.dir={run}",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    log = (run / "train.log").read_text()
    assert "step 30/60" in log and "val_acc" in log  # a progress line without a terminal
    assert "seed 0: completed | steps 60" in log and f"outputs: {run}" in log
    assert "resolved config:" in log and "_target_: groktimizer.AdamCDM" in log


def test_a_bug_in_user_code_keeps_its_traceback(compose, tmp_path, monkeypatch):
    from groktimizer.experiment import models

    def broken(self, x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (3x4 and 5x6)")

    monkeypatch.setattr(models.MLP, "forward", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        cli.run(compose(*TINY), str(tmp_path))  # not SystemExit(2) with one line


def test_mnist_from_the_hub_offline_fails_at_once_with_a_hint(monkeypatch, tmp_path):
    from groktimizer.experiment.data import mnist

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE.*save_to_disk"):
        mnist(source="ylecun/mnist", cache_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 5


def test_mnist_with_an_unreachable_hub_fails_at_once(monkeypatch, tmp_path):
    import socket

    from groktimizer.experiment.data import mnist

    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)

    def refuse(*a, **k):
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(ValueError, match="unreachable.*HF_DATASETS_OFFLINE=1"):
        mnist(source="ylecun/mnist", cache_dir=str(tmp_path))


# tools ------------------------------------------------------------------
def test_tables_without_out_writes_next_to_the_sweep(compose, tmp_path):
    Trainer(compose(*TINY, "trainer.max_steps=10"), tmp_path / "sweep" / "job").train()
    assert tables.main([str(tmp_path / "sweep")]) == 0
    assert (tmp_path / "sweep" / "tables" / "runs.md").exists()


@pytest.mark.slow
def test_optuna_study_in_sqlite_runs_and_resumes(tmp_path):
    import optuna

    db = f"sqlite:///{tmp_path / 'study.db'}"
    for i in (1, 2):
        p = _train(
            "-m", "+hparams_search=optuna", "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.storage={db}", *TINY, "trainer.max_steps=20", "trainer.seeds=[0]",
            f"hydra.sweep.dir={tmp_path / f'sweep{i}'}",
        )  # fmt: skip
        assert p.returncode == 0, p.stderr[-2000:]
    study = optuna.load_study(study_name="damping_wd", storage=db)
    assert len(study.trials) == 4
    # the search covers the default phase 2's weight decays (lambda 1-10), not plain CDM's
    assert all(0.3 <= t.params["optimizer.weight_decay"] <= 10 for t in study.trials)
