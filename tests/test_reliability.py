"""Fault injection: each test breaks a real run the way clusters and users do, then checks that
no result is lost or falsified.

Faults: SIGKILL at several points (and in the middle of a checkpoint write), SIGTERM
(preemption), a crash while writing results / checkpoints, a cut metrics line, divergence inside
a multirun, bad configurations, W&B without a key or without a network, a checkpoint that holds
pickled code, a checkpoint of another config, parallel multiruns (joblib, submitit_local).

Kills are made deterministic by a driver that wraps `train.py` (the fault hooks live here, not
in the package): FAULT_KILL_AT_STEP=N sends FAULT_SIGNAL (default SIGKILL) to the process
before step N+1, FAULT_KILL_IN_CHECKPOINT_AT_STEP=N writes half of step N's checkpoint, then
SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from groktimizer.analysis import tables
from groktimizer.experiment import cli, runio
from groktimizer.experiment.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "train.py"

DRIVER = """
import io, os, runpy, signal, sys
import torch
from groktimizer.experiment import trainer as T

kill_at = int(os.environ.get("FAULT_KILL_AT_STEP", "-1"))
sig = getattr(signal, os.environ.get("FAULT_SIGNAL", "SIGKILL"))
kill_in_save = int(os.environ.get("FAULT_KILL_IN_CHECKPOINT_AT_STEP", "-1"))

_forward_backward = T.Trainer._forward_backward
def forward_backward(self, members):
    if self.step == kill_at:
        os.kill(os.getpid(), sig)
    return _forward_backward(self, members)
T.Trainer._forward_backward = forward_backward

_save = torch.save
def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("step") == kill_in_save and hasattr(f, "write"):
        buf = io.BytesIO()
        _save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *args, **kwargs)
torch.save = save

sys.argv[0] = sys.argv[1]
del sys.argv[1]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# both phases, minibatches (RNG state), a gradient filter (its EMA) and CDM momentum all matter
RUN = [
    "trainer=smoke",
    "optimizer=cdm",  # explicit: the tests must not follow changes of the defaults
    "dataset.p=23",
    "dataset.train_fraction=0.5",
    "model.width=64",
    "model.embed_dim=16",
    "schedule.phase1.lr=0.01",
    "schedule=at_step",
    "schedule.switch.step=40",
    "optimizer.lr=0.3",
    "optimizer.weight_decay=0.01",
    "grad_filter=ema",
    "grad_filter.lamb=0.5",
    "trainer.batch_size=64",
    "trainer.max_steps=150",
    "trainer.eval_every=5",
    "trainer.checkpoint_every=15",
    "trainer.stop_at_target=false",
]
SWITCH = 40
VOLATILE = ("wall_time_s", "code")  # the only fields allowed to differ after a resume


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAULT_", "HYDRA_"))}
    env.update(OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


def train(*args: str, env: dict | None = None, faults: dict | None = None, timeout: int = 240):
    """`python train.py ARGS` (through the fault driver when `faults` are given)."""
    if faults:
        cmd = [sys.executable, "-c", DRIVER, str(TRAIN), *args]
    else:
        cmd = [sys.executable, str(TRAIN), *args]
    full_env = _env(**(env or {}), **{k: str(v) for k, v in (faults or {}).items()})
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=full_env
    )


def _results(run_dir: Path) -> dict:
    res = runio.read_json(run_dir / runio.RESULTS)
    return {k: v for k, v in res.items() if k not in VOLATILE}


def _rows(run_dir: Path) -> list[dict]:
    return runio.MetricsLog(run_dir / runio.METRICS).read()


def _ckpt_step(run_dir: Path) -> int:
    return int(runio.load_checkpoint(run_dir / runio.CHECKPOINT)["step"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every faulty run must reproduce."""
    d = tmp_path_factory.mktemp("reference")
    p = train(f"hydra.run.dir={d}", *RUN)
    assert p.returncode == 0, p.stderr
    res = _results(d)
    assert res["status"] == "completed" and res["t_switch"] == SWITCH
    rows = _rows(d)
    assert [r["step"] for r in rows] == list(range(0, 151, 5))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 1.0  # it trains: no trivial equality
    return d


# --------------------------------------------------------------------------- SIGKILL
def test_sigkill_at_three_points_and_mid_checkpoint_resumes_exactly(reference, tmp_path):
    """Killed in phase 1, right after the switch, mid-checkpoint-write and deep in phase 2,
    resumed each time with the same command: the same rows and results as never killed."""
    d = tmp_path / "run"
    args = (f"hydra.run.dir={d}", *RUN)
    # 1. phase 1, 10 steps after the checkpoint at 15: rows 20, 25 must be replayed, not kept
    p = train(*args, faults={"FAULT_KILL_AT_STEP": 25})
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert _ckpt_step(d) == 15 and [r["step"] for r in _rows(d)][-1] == 25
    assert not (d / runio.RESULTS).exists()
    with open(d / runio.METRICS, "a") as f:  # a line cut by the kill
        f.write('{"step": 30, "train_lo')
    # 2. right after the switch (step 40), resuming from the checkpoint at 30 replays it
    p = train(*args, faults={"FAULT_KILL_AT_STEP": 43})
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert "resumed from" in p.stdout and _ckpt_step(d) == 30
    assert [r["phase"] for r in _rows(d) if r["step"] in (35, 40)] == [1, 2]
    # 3. in the middle of writing the checkpoint of step 75: the one of step 60 stays intact
    p = train(*args, faults={"FAULT_KILL_IN_CHECKPOINT_AT_STEP": 75})
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert _ckpt_step(d) == 60
    partial = list(d.glob(f".{runio.CHECKPOINT}.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0
    # 4. deep in phase 2
    p = train(*args, faults={"FAULT_KILL_AT_STEP": 130})
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert _ckpt_step(d) == 120
    assert not partial[0].exists()  # the resume removed the cut temporary file
    # 5. resumed to the end
    p = train(*args)
    assert p.returncode == 0, p.stderr
    assert "resumed from" in p.stdout
    assert _rows(d) == _rows(reference)
    assert _results(d) == _results(reference)


# --------------------------------------------------------------------------- SIGTERM
def test_sigterm_checkpoints_exits_143_and_resumes_exactly(reference, tmp_path):
    d = tmp_path / "run"
    args = (f"hydra.run.dir={d}", *RUN)
    p = train(*args, faults={"FAULT_KILL_AT_STEP": 70, "FAULT_SIGNAL": "SIGTERM"})
    assert p.returncode == 143, p.stderr
    res = runio.read_json(d / runio.RESULTS)
    assert res["status"] == "interrupted" and res["steps"] == 71
    assert str(int(signal.SIGTERM)) in res["message"] and "resumable" in res["message"]
    assert _ckpt_step(d) == 71  # the work done since the periodic checkpoint (60) is kept
    assert [r["step"] for r in _rows(d)][-1] == 70
    p = train(*args)
    assert p.returncode == 0, p.stderr
    assert "resumed from" in p.stdout and "at step 71" in p.stdout
    assert _rows(d) == _rows(reference)
    assert _results(d) == _results(reference)


TINY = ["trainer=smoke", "optimizer=cdm", "dataset.p=7", "model.width=16", "model.embed_dim=8"]


def test_interrupt_chains_to_the_previous_handler_and_restores_it(compose, tmp_path):
    """submitit's own SIGUSR2/SIGTERM handler requeues the job: it must still be called."""
    calls = []

    def submitit_like(signum, frame):
        calls.append(signum)

    before = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        t = Trainer(compose(*TINY, "trainer.max_steps=40"), tmp_path)
        original = t._forward_backward

        def hooked(members):
            if t.step == 12:
                os.kill(os.getpid(), signal.SIGUSR2)
            return original(members)

        t._forward_backward = hooked
        (res,) = t.train()
        assert res["status"] == "interrupted" and t.exit_code == 143
        assert calls == [signal.SIGUSR2]
        assert _ckpt_step(tmp_path) == 13
        # after train() the process reacts to signals as before, not through a dead trainer
        assert signal.getsignal(signal.SIGUSR2) is submitit_like
    finally:
        signal.signal(signal.SIGUSR2, before)


# --------------------------------------------------------------------------- atomic files
def test_crash_while_writing_results_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / runio.RESULTS
    runio.write_json(path, {"status": "interrupted", "steps": 10})

    def crash(fd):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "fsync", crash)  # after the bytes are written, before the rename
    with pytest.raises(OSError, match="disk vanished"):
        runio.write_json(path, {"status": "completed", "steps": 20, "pad": "x" * 100_000})
    monkeypatch.undo()
    assert runio.read_json(path) == {"status": "interrupted", "steps": 10}
    assert sorted(p.name for p in tmp_path.iterdir()) == [runio.RESULTS]


def test_crash_halfway_through_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / runio.CHECKPOINT
    runio.save_checkpoint(path, {"step": 10, "seeds": [0], "members": [], "w": torch.ones(3)})
    real_save = torch.save

    def half_then_crash(obj, f, *a, **k):
        real_save({"step": obj["step"]}, f)  # some bytes land in the file
        raise MemoryError("killed by the OOM handler")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(MemoryError):
        runio.save_checkpoint(path, {"step": 20, "seeds": [0], "members": [], "w": torch.zeros(9)})
    monkeypatch.undo()
    state = runio.load_checkpoint(path)
    assert state["step"] == 10 and torch.equal(state["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [runio.CHECKPOINT]


def test_metrics_log_ignores_a_cut_line(tmp_path):
    log = runio.MetricsLog(tmp_path / runio.METRICS)
    for s in (0, 5, 10):
        log.append({"step": s, "train_loss": 1.0 / (s + 1)})
    with open(log.path, "a") as f:
        f.write('{"step": 15, "train_loss": 0.0')
    assert [r["step"] for r in log.read()] == [0, 5, 10]
    assert [r["step"] for r in log.truncate_after(5)] == [0, 5]
    assert log.path.read_text().count("\n") == 2  # the cut line is gone from the file too


# --------------------------------------------------------------------------- untrusted files
class _Payload:
    """Unpickling this would run code (creating a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _run_cli(cfg, run_dir: Path, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        cli.run(cfg, str(run_dir))
    return exc.value.code, capsys.readouterr().err


def test_checkpoint_with_pickled_code_is_refused(compose, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"step": 5, "seeds": [0], "members": [_Payload(marker)]}, run / runio.CHECKPOINT)
    code, err = _run_cli(compose(*TINY), run, capsys)
    assert code == 2 and not marker.exists()
    assert err.startswith("error: checkpoint") and err.count("\n") == 1
    assert "damaged or not a GROKtimizer checkpoint" in err and "trainer.resume=false" in err
    assert "weights_only=False" not in err  # never point a user at unsafe loading
    assert not (run / runio.RESULTS).exists() and not (run / runio.METRICS).exists()


def test_damaged_checkpoint_is_refused_not_trusted(compose, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / runio.CHECKPOINT).write_bytes(b"PK\x03\x04 not a checkpoint")
    code, err = _run_cli(compose(*TINY), run, capsys)
    assert code == 2 and "is damaged" in err and err.count("\n") == 1


def test_checkpoint_of_another_config_is_not_resumed(compose, tmp_path, capsys):
    """A sweep re-run into the same folder must not report the old job's results as the new."""
    (first,) = Trainer(compose(*TINY, "trainer.max_steps=20"), tmp_path).train()
    before = (tmp_path / runio.RESULTS).read_text()
    code, err = _run_cli(
        compose(*TINY, "trainer.max_steps=20", "optimizer.lr=0.5"), tmp_path, capsys
    )
    assert code == 2 and err.count("\n") == 1
    assert "optimizer.lr=1.0" in err and "optimizer.lr=0.5" in err and "hydra.run.dir" in err
    assert (tmp_path / runio.RESULTS).read_text() == before
    # keys that do not change the numbers may differ (a longer budget, plots, resume mode)
    (again,) = Trainer(
        compose(*TINY, "trainer.max_steps=20", "trainer.plots=true"), tmp_path
    ).train()
    assert again["final_val_loss"] == first["final_val_loss"]


# --------------------------------------------------------------------------- divergence
def _strict_json(text: str):
    def refuse(const):
        raise ValueError(f"bare {const} in a JSON file")

    return json.loads(text, parse_constant=refuse)


def test_divergence_is_recorded_and_the_multirun_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    p = train(
        "-m",
        f"hydra.sweep.dir={sweep}",
        *TINY,
        "dataset.train_fraction=0.6",
        "schedule.phase1.lr=0.01",
        "schedule=at_step",
        "schedule.switch.step=30",
        "trainer.max_steps=60",
        "optimizer.lr=1e4,0.1",
    )
    assert p.returncode == 0, p.stderr
    by_lr = {}
    jobs = sorted(p.parent for p in sweep.glob("*/" + runio.RESULTS))
    assert len(jobs) == 2
    for job in jobs:
        text = (job / runio.RESULTS).read_text()
        res = _strict_json(text)
        by_lr[res["config"]["optimizer"]["lr"]] = res
        for line in (job / runio.METRICS).read_text().splitlines():
            _strict_json(line)  # nan/inf are stored as strings: every line stays valid JSON
    bad, good = by_lr[1e4], by_lr[0.1]
    assert bad["status"] == "diverged"
    assert bad["steps"] > 30 and f"step {bad['steps']}" in bad["message"]
    assert "non-finite" in bad["message"] and "phase 2" in bad["message"]
    assert good["status"] == "completed" and good["steps"] == 60
    summary = tables.summarize(tables.load_runs(sweep), ["t_gen99"])
    assert (summary["n"], summary["diverged"]) == (2, 1)


# --------------------------------------------------------------------------- bad input
# (overrides, substrings the single error line must hold: the value and what is accepted)
BAD_RUNS = [
    (["optimizer.damping=0"], ["optimizer (CDM)", "damping", "0"]),
    (["optimizer.weight_decay=-0.1"], ["optimizer (CDM)", "weight_decay", "-0.1"]),
    (["optimizer.lr=fast"], ["optimizer (CDM)", "lr", "'fast'"]),
    (["optimizer.lr=[1,2]"], ["optimizer (CDM)", "lr", "[1, 2]"]),
    (["optimizer._target_=torch.optim.Lion"], ["optimizer._target_='torch.optim.Lion'"]),
    (["optimizer=adamw"], ["method=adamw", "not a phase-2 optimizer"]),
    (["dataset.train_fraction=1.5"], ["train_fraction: 1.5", "(0, 1)"]),
    (["dataset=modular_div", "dataset.p=21"], ["p: 21", "prime"]),
    (["dataset.op=pow"], ["'pow'", "'add'"]),
    (["model=transformer", "dataset=digits"], ["'transformer'", "'digits'", "token inputs"]),
    (["dataset=mnist", "dataset.source=/no/such/mnist"], ["'/no/such/mnist'", "local dataset"]),
    (["trainer.max_steps=0"], ["trainer.max_steps=0", "an integer >= 1"]),
    (["schedule=at_step", "schedule.switch.step=-1"], ["schedule", "step", "-1"]),
    (["trainer.device=tpu"], ["trainer.device='tpu'", "auto, cpu, cuda"]),
    (["trainer.seeds=[1,1]"], ["trainer.seeds=[1, 1]", "distinct"]),
    (["trainer.resume=true"], ["trainer.resume=true", "no checkpoint"]),
    (["model.activation=swish"], ["'swish'", "'relu'"]),
    (["grad_filter=ema", "grad_filter.alpha=1.0"], ["grad_filter", "alpha", "1.0"]),
    (
        ["dataset=linear_regression", "model=linear", "trainer.loss=cross_entropy"],
        ["'cross_entropy'", "classification"],
    ),
]


@pytest.mark.parametrize("overrides,needles", BAD_RUNS, ids=lambda x: " ".join(x)[:40])
def test_bad_value_one_line_exit_2_nothing_written(compose, tmp_path, capsys, overrides, needles):
    base = [] if any(o.startswith(("dataset=", "model=")) for o in overrides) else TINY
    code, err = _run_cli(compose(*base, *overrides), tmp_path, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not list(tmp_path.iterdir())  # no results, metrics, checkpoint or config


BAD_COMPOSE = [
    (["dataset=imagenet"], ["dataset=imagenet", "accepted digits,", "modular_add"]),
    (["+experiment=does_not_exist"], ["experiment=does_not_exist", "table2_grokking"]),
    (["experiment=table2_grokking"], ["+experiment=table2_grokking"]),
    (["model=resnet"], ["model=resnet", "mlp", "transformer"]),
    (["trainer.max_steps=abc"], ["trainer.max_steps='abc'", "Integer"]),
    (["trainer.stop_at_target=maybe"], ["'maybe'", "bool"]),
    (["trainer.nope=1"], ["trainer.nope", "accepted max_steps, eval_every"]),
    (["dataset.p"], ["'dataset.p'", "key=value"]),
]


@pytest.mark.parametrize("overrides,needles", BAD_COMPOSE, ids=lambda x: " ".join(x)[:40])
def test_config_hydra_cannot_compose_is_one_line(compose, overrides, needles):
    with pytest.raises(Exception) as exc:  # noqa: PT011 -- Hydra's and OmegaConf's own types
        compose(*overrides)
    line = cli.describe_config_error(exc.value)
    assert "\n" not in line and "_schema" not in line, line
    for needle in needles:
        assert needle in line, (needle, line)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["dataset=imagenet"], "dataset=imagenet is not a known option: accepted digits"),
        (["+experiment=does_not_exist"], "experiment=does_not_exist is not a known option"),
        (["trainer.max_steps=abc"], "trainer.max_steps='abc' is invalid"),
        (["model=transformer", "dataset=digits"], "needs token inputs"),
        (["optimizer.damping=0"], "optimizer (AdamCDML2): AdamCDML2: damping"),
    ],
)
def test_bad_input_through_train_py(tmp_path, overrides, needle):
    d = tmp_path / "run"
    p = train(f"hydra.run.dir={d}", "trainer=smoke", *overrides)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
    for name in (runio.RESULTS, runio.METRICS, runio.CHECKPOINT):
        assert not (d / name).exists()


# --------------------------------------------------------------------------- W&B failures
def _wandb_run(tmp_path: Path, **env: str):
    """A tiny run with logger.mode=online, HOME without a netrc, W&B settings only from `env`."""
    home = tmp_path / "home"
    home.mkdir()
    d = tmp_path / "run"
    full = {k: v for k, v in _env().items() if not k.startswith("WANDB_") and k != "NETRC"}
    full.update(HOME=str(home), WANDB_SILENT="true", WANDB_INIT_TIMEOUT="5", **env)
    cmd = [sys.executable, str(TRAIN), f"hydra.run.dir={d}", *TINY, "trainer.max_steps=20"]
    cmd += ["logger=wandb", "logger.mode=online"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT, env=full)
    return p, d


def test_wandb_online_without_api_key_logs_offline_and_keeps_results(tmp_path):
    p, d = _wandb_run(tmp_path)
    assert p.returncode == 0, p.stderr
    assert runio.read_json(d / runio.RESULTS)["status"] in ("completed", "reached-target")
    assert p.stderr.count("no API key") == 1, p.stderr
    assert len(list(d.glob("wandb/offline-run-*"))) == 1


def test_wandb_unreachable_falls_back_offline_and_leaks_no_key(tmp_path):
    key = "f" * 32 + "0123456789"
    p, d = _wandb_run(tmp_path, WANDB_API_KEY=key, WANDB_BASE_URL="http://127.0.0.1:9")
    assert p.returncode == 0, p.stderr
    assert runio.read_json(d / runio.RESULTS)["status"] in ("completed", "reached-target")
    assert p.stderr.count("online init failed") == 1, p.stderr
    assert len(list(d.glob("wandb/offline-run-*"))) == 1
    leaked = [f for f in d.rglob("*") if f.is_file() and key.encode() in f.read_bytes()]
    assert leaked == []


# --------------------------------------------------------------------------- parallel multiruns
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_multirun_gives_each_job_its_own_folder(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    p = train(
        "-m",
        f"launcher={launcher}",
        f"hydra.sweep.dir={sweep}",
        *TINY,
        "trainer.max_steps=20",
        "optimizer.damping=0.5,2.0",
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    results = sorted(sweep.rglob(runio.RESULTS))
    assert len(results) == 2
    assert len({r.parent for r in results}) == 2
    dampings = set()
    for r in results:
        res = runio.read_json(r)
        dampings.add(res["config"]["optimizer"]["damping"])
        assert f"optimizer.damping={res['config']['optimizer']['damping']}" in res["overrides"]
        steps = [row["step"] for row in _rows(r.parent)]
        assert steps == [0, 10, 20]  # one writer per metrics file: no interleaved rows
    assert dampings == {0.5, 2.0}


def test_submitit_slurm_config_requeues_and_resumes_in_place():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", ["launcher=submitit_slurm"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0
    # the requeued job runs in the same folder, where trainer.resume=auto finds its checkpoint
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.override_dirname}"
    assert cfg.trainer.resume == "auto"
