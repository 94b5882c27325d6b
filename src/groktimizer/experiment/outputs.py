"""What a run leaves behind: config.yaml, results.json (the table builder's contract), curves.png
and the W&B run; and where it came from (code version, Hydra overrides and group choices)."""

from __future__ import annotations

import functools
import sys
from typing import Any

from groktimizer.experiment import runio


@functools.cache
def code() -> dict[str, Any]:
    return runio.code_version()


def hydra_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 -- not under Hydra (tests, notebooks)
        return []


def hydra_choices() -> dict[str, str]:
    """The option chosen in each config group (``method``, ``optimizer``, ...) when under Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        return {k: str(v) for k, v in choices.items() if not k.startswith("hydra") and v}
    except Exception:  # noqa: BLE001 -- not under Hydra
        return {}


def run_name(experiment: str, overrides: list[str], seed: int) -> str:
    """A W&B run name that tells the jobs of a sweep apart: the experiment, the overrides that
    change the run (seeds and run-invariant keys left out), the seed."""
    parts = []
    for o in overrides:
        key = o.partition("=")[0].lstrip("+~")
        if key in ("seed", "trainer.seeds") or runio.is_run_invariant(key):
            continue
        parts.append(o.lstrip("+"))
    name = "-".join([experiment, *parts, f"s{seed}"])
    return name if len(name) <= 128 else name[:120] + "…" + f"s{seed}"


def write_configs(trainer: Any) -> None:
    import yaml

    for m in trainer.members:
        m.out_dir.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(trainer.member_config(m), sort_keys=False)
        runio.write_text(m.out_dir / runio.CONFIG, text)


def results(trainer: Any, m: Any) -> dict[str, Any]:
    tr, last = m.tracker, m.tracker.last
    choices = hydra_choices()
    res: dict[str, Any] = {
        "status": tr.status,
        "message": tr.message,
        "seed": m.seed,
        "steps": trainer.step if tr.status != "diverged" else last.get("step", trainer.step),
        "max_steps": trainer.tcfg.max_steps,
        **tr.summary(),
        "final_train_acc": last.get("train_acc"),
        "final_val_acc": last.get("val_acc"),
        "final_train_loss": last.get("train_loss"),
        "final_val_loss": last.get("val_loss"),
        "final_weight_norm": last.get("weight_norm"),
        "wall_time_s": m.wall_time,
        "events": tr.events,
        "experiment_name": trainer.cfg.experiment_name,
        "method": choices.get("method"),
        "choices": choices,
        "overrides": hydra_overrides(),
        "config": trainer.member_config(m),
        "code": code(),
        "device": str(trainer.device),
    }
    if "dist_min_norm" in last:
        res["final_dist_min_norm"] = last["dist_min_norm"]
    return res


def finish(trainer: Any, m: Any) -> dict[str, Any]:
    """Write the member's results.json (with the final sharpness if asked), plot, W&B summary."""
    res = results(trainer, m)
    tcfg = trainer.tcfg
    if tcfg.sharpness and m.tracker.status != "diverged":
        from groktimizer.curvature import top_eigenvalue

        eig, iters = top_eigenvalue(
            trainer.loss_closure(m),
            [p for p in m.model.parameters() if p.requires_grad],
            iters=tcfg.sharpness_iters,
        )
        res["sharpness"] = float(eig)
        res["sharpness_iters"] = int(iters)
    runio.write_json(m.out_dir / runio.RESULTS, res)
    if tcfg.plots:
        from groktimizer.experiment.plots import plot_run

        try:
            plot_run(m.log.read(), m.out_dir / "curves.png", m.tracker.t_switch)
        except Exception as err:  # noqa: BLE001 -- a plot never costs the results
            print(f"warning: plot failed: {err}", file=sys.stderr)
    if m.wandb is not None:
        m.wandb.summary(res)
        if (m.out_dir / "curves.png").exists():
            m.wandb.log_image("curves", str(m.out_dir / "curves.png"))
    return res


def start_wandb(trainer: Any, factory: Any = None) -> None:
    lg = trainer.cfg.logger
    if lg.kind != "wandb":
        return
    from groktimizer.experiment.wandb_logger import WandbRun

    factory = factory or WandbRun
    for m in trainer.members:
        name = run_name(trainer.cfg.experiment_name, hydra_overrides(), m.seed)
        m.wandb = factory(
            mode=lg.mode,
            project=lg.project,
            entity=lg.entity,
            group=lg.group or trainer.cfg.experiment_name,
            tags=list(lg.tags),
            job_type=lg.job_type,
            name=name,
            config=trainer.member_config(m),
            directory=str(m.out_dir),
        )
