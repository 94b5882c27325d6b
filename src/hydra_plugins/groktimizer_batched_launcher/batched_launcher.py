"""``hydra/launcher=groktimizer_batched`` (``launcher=batched``): sweeps as batches.

The sweep's jobs are composed as the basic launcher composes them, then grouped
(:func:`groktimizer.experiment.batched_sweep.plan`): jobs that differ only in optimizer,
schedule and filter values and seeds share a group. Each job of a group is set up in its own
folder exactly as a plain job (``run_job``: ``.hydra/``, ``train.log``, validation, the resume
check and lock of ``groktimizer.experiment.cli.prepare``), then the group trains in this process
as one batch and each job reports its own return value. A group of one single-seed job runs as a
plain job (the task function). Jobs run one after another; use ``max_members`` to bound a batch.
"""

import contextlib
import copy
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.groktimizer_batched_launcher.batched_launcher.BatchedLauncher"
    # the most members (seeds x grid points) one batch may hold; 0: no limit
    max_members: int = 0


ConfigStore.instance().store(
    group="hydra/launcher",
    name="groktimizer_batched",
    node=BatchedLauncherConf,
    provider="groktimizer",
)


def _task_config(sweep_config: DictConfig) -> dict[str, Any] | None:
    """The job's resolved config without the hydra node (None when it does not resolve)."""
    HydraConfig.instance().set_config(sweep_config)
    cfg = copy.deepcopy(sweep_config)
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 -- the job's own run reports it
        return None


class BatchedLauncher(Launcher):
    def __init__(self, max_members: int = 0) -> None:
        if not isinstance(max_members, int) or max_members < 0:
            raise ValueError(
                f"hydra.launcher.max_members must be an int >= 0 (0: no limit), got {max_members!r}"
            )
        self.max_members = max_members
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _compose(self, overrides: Sequence[str], idx: int) -> DictConfig:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        return cfg

    def _run(self, cfg: DictConfig, task: TaskFunction) -> JobReturn:
        return run_job(
            hydra_context=self.hydra_context,
            task_function=task,
            config=cfg,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from groktimizer.experiment.batched_sweep import members_of, plan

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = [self._compose(o, initial_job_idx + i) for i, o in enumerate(job_overrides)]
        resolved = [_task_config(c) for c in configs]
        groups = plan(resolved, self.max_members)
        log.info(
            f"Launching {len(job_overrides)} jobs as {len(groups)} batched group(s), "
            f"sweep output dir: {self.config.hydra.sweep.dir}"
        )
        returns: list[JobReturn | None] = [None] * len(configs)
        for group in groups:
            for i in group:
                log.info(
                    f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(job_overrides[i]))}"
                )
            n = sum(members_of(resolved[i]) if resolved[i] else 1 for i in group)
            if n == 1:
                returns[group[0]] = self._run(configs[group[0]], self.task_function)
            else:
                for i, ret in zip(group, self._run_group([configs[i] for i in group]), strict=True):
                    returns[i] = ret
        return returns  # type: ignore[return-value]

    def _run_group(self, configs: list[DictConfig]) -> list[JobReturn]:
        from groktimizer.experiment import cli
        from groktimizer.experiment.batched_sweep import train_group

        def prepare(cfg: DictConfig) -> Any:
            return cli.prepare(cfg, cli._output_dir(), batched=True)

        prepared = [self._run(c, prepare) for c in configs]
        ready = [
            (c, r)
            for c, r in zip(configs, prepared, strict=True)
            if r.status == JobStatus.COMPLETED and not isinstance(r._return_value, float)
        ]
        if not ready:
            return prepared

        def context(cfg: DictConfig) -> Any:
            @contextlib.contextmanager
            def job() -> Any:
                HydraConfig.instance().set_config(cfg)
                yield

            return job

        trainers = [r._return_value for _, r in ready]
        outcomes = train_group(trainers, [context(c) for c, _ in ready])
        exit_code = 0
        for (cfg, ret), trainer, out in zip(ready, trainers, outcomes, strict=True):
            HydraConfig.instance().set_config(cfg)
            if isinstance(out, ValueError):
                msg = " ".join(str(out).split())
                ret.return_value = cli._record_invalid(trainer.cfg, str(trainer.run_dir), msg)
            elif isinstance(out, OSError):
                ret.return_value = cli.write_failed(trainer, out)
            elif trainer.exit_code:
                exit_code = trainer.exit_code
                ret.return_value = float("inf")
            else:
                ret.return_value = cli.report(trainer, out)
        if exit_code:  # interrupted: every job checkpointed; the launcher requeues the sweep
            sys.exit(exit_code)
        return prepared
