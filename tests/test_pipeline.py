"""The Hydra pipeline: every config composes, every dataset trains, runs resume exactly."""

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import wandb_files
import yaml

from groktimizer.experiment import runio
from groktimizer.experiment.config import ConfigError, validate
from groktimizer.experiment.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# dataset -> the models that make sense for it
PAIRS = {
    "modular_add": ["mlp", "transformer", "lstm"],
    "modular_sub": ["mlp", "transformer"],
    "modular_mul": ["mlp", "transformer"],
    "modular_div": ["mlp", "transformer"],
    "modular_quad": ["mlp", "transformer"],
    "modular": ["mlp", "transformer"],
    "sparse_parity": ["mlp"],
    "linear_regression": ["linear", "mlp"],
    "digits": ["mlp", "mlp_large_init", "cnn"],
    "mnist": ["mlp_large_init", "cnn"],
}
TINY = {
    "modular_add": ["dataset.p=7", "dataset.train_fraction=0.5"],
    "modular_sub": ["dataset.p=7", "dataset.train_fraction=0.5"],
    "modular_mul": ["dataset.p=7", "dataset.train_fraction=0.5"],
    "modular_div": ["dataset.p=7", "dataset.train_fraction=0.5"],
    "modular_quad": ["dataset.p=7", "dataset.train_fraction=0.5"],
    "modular": ["dataset.p=7", "dataset.train_fraction=0.5"],
    "sparse_parity": ["dataset.n_bits=10", "dataset.n_train=64", "dataset.n_val=64"],
    "linear_regression": ["dataset.n=10", "dataset.d=30", "dataset.n_val=20"],
    "digits": ["dataset.n_train=50"],
    "mnist": ["dataset.n_train=20", "dataset.n_val=10"],
}


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_dataset_has_a_model_pairing():
    assert sorted(PAIRS) == group_options("dataset")
    assert sorted({m for models in PAIRS.values() for m in models}) == group_options("model")


@pytest.fixture
def tiny_mnist(tmp_path):
    import numpy as np
    from datasets import Dataset, DatasetDict, Features, Image, Value

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (28, 28), dtype=np.uint8) for _ in range(40)]
    labels = [int(i % 10) for i in range(40)]
    feats = Features({"image": Image(), "label": Value("int64")})
    split = Dataset.from_dict({"image": imgs, "label": labels}, features=feats)
    path = tmp_path / "mnist_local"
    DatasetDict({"train": split, "test": split}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize(
    "dataset,model",
    [
        pytest.param(d, m, marks=[pytest.mark.slow] if m == "transformer" else [])
        for d, models in PAIRS.items()
        for m in models
    ],
)
def test_compose_and_train_tiny(compose, tmp_path, tiny_mnist, dataset, model):
    extra = list(TINY[dataset])
    if dataset == "mnist":
        extra.append(f"dataset.source={tiny_mnist}")
    if model in ("linear",) or dataset == "linear_regression":
        extra += ["optimizer=cdm", "optimizer.lr=0.1"]
    cfg = compose(
        f"dataset={dataset}", f"model={model}", "trainer=smoke", "trainer.max_steps=20", *extra
    )
    validate(cfg)
    results = Trainer(cfg, tmp_path / "run").train()
    (res,) = results
    assert res["status"] in ("completed", "reached-target")
    rows = runio.MetricsLog(tmp_path / "run" / runio.METRICS).read()
    assert [r["step"] for r in rows] == [0, 10, 20][: len(rows)]
    assert all(0.0 <= r["train_acc"] <= 1.0 for r in rows)
    saved = runio.read_json(tmp_path / "run" / runio.RESULTS)
    assert (
        saved["config"]["dataset"]
        == yaml.safe_load((tmp_path / "run" / runio.CONFIG).read_text())["dataset"]
    )


@pytest.mark.parametrize(
    "group", ["method", "optimizer", "schedule", "grad_filter", "guard", "logger", "trainer"]
)
def test_every_option_composes_validates_and_builds(compose, group):
    """Each option's `_target_` nodes build real objects (a wrong class path or argument fails)."""
    from torch import nn

    from groktimizer.experiment.builders import build_filter, build_optimizer

    for option in group_options(group):
        # a one-phase optimizer is refused as phase 2: try every optimizer alone, except the
        # ones whose values the biphasic schedule measures ("auto")
        alone = group == "optimizer" and not option.endswith("_auto")
        extra = ["schedule=single"] if alone else []
        if group == "schedule" and option == "single":  # one phase: the default's 'auto' is refused
            extra = ["optimizer=adam_cdm"]
        cfg = compose(f"{group}={option}", *extra)
        validate(cfg)
        opt = build_optimizer(cfg, nn.Linear(3, 2))
        assert opt.param_groups and opt.param_groups[0]["lr"] > 0, (group, option)
        build_filter(cfg)


@pytest.mark.parametrize("schedule", ["auto", "at_step"])
def test_schedules_written_out_share_the_default_phase_1(compose, schedule):
    """schedule=auto and schedule=at_step repeat biphasic's phase 1 (merged onto it, the
    accuracy switch's keys would reach their criteria): the copies must not drift."""
    default = compose().schedule
    other = compose(f"schedule={schedule}").schedule
    assert other.phase1 == default.phase1 and other._target_ == default._target_


@pytest.mark.slow
def test_a_new_optimizer_is_one_yaml_file(tmp_path):
    """A user adds conf/optimizer/<name>.yaml naming any torch optimizer; nothing else changes."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from groktimizer.experiment.config import register_configs

    register_configs()
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "optimizer" / "radam.yaml").write_text(
        "_target_: torch.optim.RAdam\n_partial_: true\nlr: 3e-3\nweight_decay: 0.0\n"
    )
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = hydra_compose(
            config_name="train", overrides=["method=adamw", "optimizer=radam", "trainer=smoke"]
        )
    GlobalHydra.instance().clear()
    validate(cfg)
    (res,) = Trainer(cfg, tmp_path / "run").train()
    assert res["config"]["optimizer"]["_target_"] == "torch.optim.RAdam"
    assert res["status"] in ("completed", "reached-target")
    rows = runio.MetricsLog(tmp_path / "run" / runio.METRICS).read()
    assert rows[-1]["lr"] == pytest.approx(3e-3) and rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_every_robustness_setting_composes_and_builds(compose, tmp_path):
    from torch import nn

    from groktimizer.experiment.builders import build_optimizer

    for option in group_options("setting"):
        cfg = compose("+experiment=robustness", f"+setting={option}")
        validate(cfg)
        build_optimizer(cfg, nn.Linear(3, 2))


def test_every_experiment_composes(compose):
    for option in group_options("experiment"):
        cfg = compose(f"+experiment={option}")
        validate(cfg)
        assert cfg.experiment_name == option or cfg.experiment_name.startswith(option)


@pytest.mark.slow
def test_default_run_writes_its_files(compose, tmp_path):
    cfg = compose("trainer.max_steps=30", "trainer.plots=true", "trainer.eval_every=10")
    (res,) = Trainer(cfg, tmp_path).train()
    for name in ("config.yaml", "metrics.jsonl", "results.json", "curves.png", "checkpoint.pt"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    for key in (
        "status",
        "t_interp",
        "t_switch",
        "t_gen95",
        "t_gen99",
        "final_train_acc",
        "final_val_acc",
        "final_train_loss",
        "final_val_loss",
        "final_weight_norm",
        "wall_time_s",
        "steps",
        "code",
        "config",
    ):
        assert key in saved, key
    assert saved["steps"] == 30
    assert saved["code"]["torch_version"]
    assert saved["config"]["optimizer"]["_target_"] == "groktimizer.AdamCDML2"


def _interrupt_at(trainer: Trainer, step: int) -> None:
    original = trainer._forward_backward

    def hooked(members):
        if trainer.step == step:
            trainer._stop_signal = signal.SIGTERM
        return original(members)

    trainer._forward_backward = hooked


STRIP = ("wall_time_s", "code", "events")


def _strip(res: dict) -> dict:
    return {k: v for k, v in res.items() if k not in STRIP}


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [15, 45])  # phase 1, and mid-phase 2
def test_resume_matches_uninterrupted_run(compose, tmp_path, stop_at):
    overrides = [
        "dataset.p=23",
        "schedule=at_step",
        "schedule.switch.step=30",
        "trainer.max_steps=80",
        "trainer.eval_every=5",
        "trainer.checkpoint_every=20",
        "trainer.plots=false",
        "trainer.stop_at_target=false",
    ]
    (full,) = Trainer(compose(*overrides), tmp_path / "a").train()

    t = Trainer(compose(*overrides), tmp_path / "b")
    _interrupt_at(t, stop_at)
    (part,) = t.train()
    assert part["status"] == "interrupted"
    assert t.exit_code == 143
    (resumed,) = Trainer(compose(*overrides), tmp_path / "b").train()

    assert full["t_switch"] == 30
    assert _strip(resumed) == _strip(full)
    rows_a = runio.MetricsLog(tmp_path / "a" / runio.METRICS).read()
    rows_b = runio.MetricsLog(tmp_path / "b" / runio.METRICS).read()
    assert rows_a == rows_b


@pytest.mark.slow
@pytest.mark.parametrize("offset", [-1, 0])
def test_resume_at_the_switch_in_minibatches_matches_uninterrupted_run(compose, tmp_path, offset):
    """The default measures at phase 2's first step the minibatch gradient's agreement
    with the full batch (a closure the trainer gives the optimizer). Checkpointed between the
    switch's evaluation and that step (offset -1), the resumed run still measures it; checkpointed
    after it (0), the step's event (out at the next evaluation) is in the checkpoint."""
    overrides = [
        "dataset.p=23",
        "schedule.switch.threshold=0.5",
        "schedule.switch.patience=1",
        "trainer.batch_size=64",
        "trainer.max_steps=60",
        "trainer.eval_every=5",
        "trainer.checkpoint_every=5",
        "trainer.plots=false",
        "trainer.stop_at_target=false",
    ]
    (full,) = Trainer(compose(*overrides), tmp_path / "a").train()
    noise = [e for e in full["events"] if e["event"] == "grad_noise"]
    assert len(noise) == 1 and noise[0]["cos2"] < 0.99 and noise[0]["step"] == full["t_switch"]

    t = Trainer(compose(*overrides), tmp_path / "b")
    _interrupt_at(t, full["t_switch"] + offset)  # stops after the step that follows
    (part,) = t.train()
    assert part["status"] == "interrupted"
    (resumed,) = Trainer(compose(*overrides), tmp_path / "b").train()
    assert _strip(resumed) == _strip(full)
    assert [(e["event"], e["step"], e.get("weight_decay")) for e in resumed["events"]] == [
        (e["event"], e["step"], e.get("weight_decay")) for e in full["events"]
    ]
    rows_a = runio.MetricsLog(tmp_path / "a" / runio.METRICS).read()
    rows_b = runio.MetricsLog(tmp_path / "b" / runio.METRICS).read()
    assert rows_a == rows_b


@pytest.mark.slow
def test_wandb_offline_summary_holds_t_gen99(compose, tmp_path):
    cfg = compose(
        "logger=wandb", "trainer.max_steps=20", "trainer.plots=false", "trainer.eval_every=10"
    )
    (res,) = Trainer(cfg, tmp_path).train()
    files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    summary = {}
    for _ in range(50):  # W&B's service may still be flushing the run file
        summary = wandb_files.summary(files[0])
        if "t_gen99" in summary:
            break
        time.sleep(0.2)
    assert "t_gen99" in summary and summary["t_gen99"] == res["t_gen99"]
    assert summary["status"] == res["status"]
    assert summary["final_val_acc"] == pytest.approx(res["final_val_acc"])
    logged = [r for r in wandb_files.history(files[0]) if "val_acc" in r]
    assert [r["_step"] for r in logged] == [0, 10, 20]


@pytest.mark.parametrize(
    "override,needle",
    [
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("trainer.eval_every=0", "trainer.eval_every"),
        ("trainer.threads=0", "trainer.threads"),
        ("trainer.dtype=float16", "trainer.dtype"),
        ("logger.mode=sometimes", "logger.mode"),
        ("optimizer=adamw", "optimizer._target_=torch.optim.AdamW"),
        ("optimizer._target_=torch.optim.Lion", "optimizer._target_"),
    ],
)
def test_bad_values_fail_validation_with_one_line(compose, override, needle):
    cfg = compose(override)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and "accepted" in msg


@pytest.mark.parametrize(
    "override,needle",
    [
        ("optimizer.damping=0", "damping"),
        ("optimizer.damping=-1", "damping"),
        ("optimizer.weight_decay=-0.1", "weight_decay"),
        ("optimizer.lr=0", "lr"),
        ("grad_filter=ema", "alpha"),
    ],
)
def test_bad_constructor_arguments_name_the_node(compose, tmp_path, override, needle):
    from groktimizer.experiment.builders import BuildError

    extra = ["grad_filter.alpha=1.5"] if override.startswith("grad_filter") else []
    with pytest.raises(BuildError) as err:
        Trainer(compose(override, *extra, "trainer=smoke"), tmp_path)
    msg = str(err.value)
    assert msg.startswith(override.split(".")[0].split("=")[0]) and needle in msg
    assert "\n" not in msg
    assert not list(tmp_path.iterdir())


def test_trainer_threads_sets_torch_threads(compose, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # so that threads=1 is a change even on a 1-core machine
        Trainer(compose("trainer.threads=1", "trainer.max_steps=5"), tmp_path)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        # null leaves torch's setting alone
        Trainer(compose("trainer.max_steps=5"), tmp_path / "b")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_auto_decay_reaches_the_decayed_group_with_no_decay_groups(compose):
    """`no_decay` splits groups by λ > 0: with λ 'auto' the decayed group must carry a λ > 0
    (the placeholder until the switch), or the measured λ would never be applied to it."""
    from torch import nn

    from groktimizer.experiment.builders import build_optimizer

    cfg = compose("method=groktimizer", "no_decay=[bias]")
    opt = build_optimizer(cfg, nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    assert [g["weight_decay"] for g in opt.phase2.param_groups] == [1.0, 0.0]


def test_a_compiled_model_switches_with_its_curvature_by_differences(
    compose, tmp_path, monkeypatch
):
    """trainer.compile=true crashed at the switch (AOTAutograd has no double backward). The
    backend is aot_eager here (same autograd, no C compiler); the default is inductor."""
    import torch

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compile_(m, backend="aot_eager"))
    cfg = compose(
        "dataset.p=23",
        "model.width=128",
        "model.embed_dim=32",
        "trainer.compile=true",
        "trainer.max_steps=160",
        "trainer.eval_every=10",
    )
    with pytest.warns(UserWarning, match="central differences"):
        (res,) = Trainer(cfg, tmp_path).train()
    saved = json.loads((tmp_path / "results.json").read_text())
    (switch,) = [e for e in saved["events"] if e["event"] == "switch"]
    assert switch["auto_lr"]["hvp"] == "finite_difference"
    assert saved["steps"] == 160 and saved["t_switch"] is not None
