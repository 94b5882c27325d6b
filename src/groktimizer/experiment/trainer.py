"""The training loop: one run, or K seeds trained side by side as one batched ensemble.

Flat and direct, like the reference grokking code: the whole data set lives on the device as
tensors, each step is ``zero_grad -> loss -> backward -> (filter) -> step``, and nothing is read
back to the host except at evaluation steps. Each member (seed) has its own data split,
initialisation, optimizer (with its own phase switch) and output directory holding
``config.yaml``, ``metrics.jsonl``, ``results.json`` and ``curves.png`` exactly as a single run.
Milestones, checkpoints, signals and output files live in their own modules.

Evaluation at step t uses the parameters after t updates; t=0 is the initialisation.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groktimizer import observe, phase_of
from groktimizer.experiment import checkpoint, outputs, runio
from groktimizer.experiment.builders import build_filter, build_optimizer
from groktimizer.experiment.data import TaskData
from groktimizer.experiment.metrics import compute_loss, correct, loss_kind, weight_norm
from groktimizer.experiment.milestones import Tracker
from groktimizer.experiment.preemption import EXIT_INTERRUPTED, StopSignals

log = logging.getLogger(__name__)
# without a terminal (SLURM logs) a progress line at every tenth of the budget and at least this
# often
PROGRESS_EVERY_S = 30.0


@dataclass
class Member:
    seed: int
    data: TaskData
    model: nn.Module
    optimizer: Any
    grad_filter: Any
    out_dir: Path
    log: runio.MetricsLog
    tracker: Tracker
    generator: torch.Generator
    wandb: Any = None
    wall_time: float = 0.0

    @property
    def active(self) -> bool:
        return self.tracker.status == "running"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={name!r} but CUDA is not available: use auto or cpu")
    return torch.device(name)


class Trainer:
    """Trains the members described by `cfg` (a resolved Hydra config) into `run_dir`."""

    def __init__(self, cfg: Any, run_dir: str | Path, *, wandb_factory: Any = None):
        from omegaconf import OmegaConf

        self.cfg = cfg
        self.tcfg = cfg.trainer
        self.run_dir = Path(run_dir)
        self.device = resolve_device(str(self.tcfg.device))
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[self.tcfg.dtype]
        if self.tcfg.flush_denormal:
            # tiny post-interpolation gradients otherwise make CPU steps ~50x slower
            torch.set_flush_denormal(True)
        if self.tcfg.threads is not None:
            torch.set_num_threads(int(self.tcfg.threads))
        self.seeds = list(self.tcfg.seeds) if self.tcfg.seeds is not None else [int(cfg.seed)]
        self.ensemble = self.tcfg.seeds is not None
        self.config_dict = OmegaConf.to_container(cfg, resolve=True)
        self.step = 0
        self.exit_code = 0
        self._stop_signal: int | None = None
        self._resume_state: dict[str, Any] | None = None
        self._resume_checked = False
        self.batched_member = False  # set by the batched launcher before the resume check
        self._lock: runio.RunLock | None = None
        self._last_progress = time.monotonic()
        self._last_progress_step = 0
        # everything is built (and validated) before any file is written
        self.members = [self._build_member(s) for s in self.seeds]
        task = self.members[0].data.task
        self.loss_kind = loss_kind(task, self.tcfg.loss)
        if self.loss_kind == "cross_entropy" and task != "classification":
            raise ValueError(
                f"trainer.loss='cross_entropy' needs a classification dataset; "
                f"{self.members[0].data.name!r} is {task}"
            )
        self._wandb_factory = wandb_factory
        mode = self.tcfg.ensemble
        if mode == "auto":  # one after another is faster on CPU for these small models
            mode = "vmap" if self.device.type == "cuda" else "loop"
        self._vmap = self.ensemble and mode == "vmap" and len(self.members) > 1
        if self._vmap:
            self._setup_vmap()

    # ------------------------------------------------------------------ building
    def _build_member(self, seed: int) -> Member:
        from hydra.utils import instantiate

        data = instantiate(self.cfg.dataset)(seed=seed).to(self.device, self.dtype)
        torch.manual_seed(seed)
        model = instantiate(self.cfg.model)(data).to(device=self.device, dtype=self.dtype)
        if self.tcfg.compile:
            model = torch.compile(model)
        out_dir = self.run_dir / f"seed_{seed}" if self.ensemble else self.run_dir
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)
        member = Member(
            seed=seed,
            data=data,
            model=model,
            optimizer=build_optimizer(self.cfg, model),
            grad_filter=build_filter(self.cfg),
            out_dir=out_dir,
            log=runio.MetricsLog(out_dir / runio.METRICS),
            tracker=Tracker(),
            generator=gen,
        )
        # GROKtimizer measures gradient noise at phase 2's first step, between two evaluations:
        # it needs the closure there too, also in a run resumed from a checkpoint at the switch
        set_closure = getattr(member.optimizer, "set_curvature_closure", None)
        if callable(set_closure):
            set_closure(self.loss_closure(member))
        return member

    def _setup_vmap(self) -> None:
        from torch.func import functional_call, vmap

        base = self.members[0].model
        self._names = [n for n, _ in base.named_parameters()]
        buffers = dict(base.named_buffers())
        kind, task = self.loss_kind, self.members[0].data.task

        def member_loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
            out = functional_call(base, (params, buffers), (x,))
            return compute_loss(out, y, kind, task)

        self._vmapped_loss = vmap(member_loss)

    def member_config(self, m: Member) -> dict[str, Any]:
        return {**self.config_dict, "seed": m.seed}

    def loss_closure(self, m: Member) -> Any:
        """Full-batch training loss of member `m` (curvature probes, the switch, sharpness)."""

        def closure() -> torch.Tensor:
            out = m.model(m.data.x_train)
            return compute_loss(out, m.data.y_train, self.loss_kind, m.data.task)

        return closure

    # ------------------------------------------------------------------ the hot loop
    def _batch(self, m: Member) -> tuple[torch.Tensor, torch.Tensor]:
        bs = self.tcfg.batch_size
        x, y = m.data.x_train, m.data.y_train
        if bs is None or bs >= x.shape[0]:
            return x, y
        idx = torch.randint(0, x.shape[0], (bs,), generator=m.generator).to(x.device)
        return x[idx], y[idx]

    def _forward_backward(self, members: list[Member]) -> None:
        if self._vmap and len(members) > 1:
            batches = [self._batch(m) for m in members]
            xs = torch.stack([b[0] for b in batches])
            ys = torch.stack([b[1] for b in batches])
            per_member = [list(m.model.parameters()) for m in members]
            params = {
                n: torch.stack([ps[i] for ps in per_member]) for i, n in enumerate(self._names)
            }
            self._vmapped_loss(params, xs, ys).sum().backward()
        else:
            for m in members:
                x, y = self._batch(m)
                compute_loss(m.model(x), y, self.loss_kind, m.data.task).backward()

    def _step(self, active: list[Member]) -> None:
        for m in active:
            m.optimizer.zero_grad(set_to_none=True)
        self._forward_backward(active)
        for m in active:
            if m.grad_filter is not None:
                m.grad_filter.apply(m.model.parameters())
            if self.tcfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(m.model.parameters(), self.tcfg.grad_clip)
            m.optimizer.step()
        self.step += 1

    def train(self) -> list[dict[str, Any]]:
        """Run to the end (or a stop signal); returns each member's results dict."""
        exit_code = 0
        self.prepare()
        with StopSignals(self) as signals:
            resumed = self._maybe_resume()
            outputs.write_configs(self)
            outputs.start_wandb(self, self._wandb_factory)
            try:
                if not resumed:
                    self._evaluate_all(self.members, 0.0)
                progress = self._progress_bar()
                t0 = time.perf_counter()
                while self.step < self.tcfg.max_steps:
                    active = [m for m in self.members if m.active]
                    if not active:
                        break
                    if self._stop_signal is not None:
                        self._interrupt(active, time.perf_counter() - t0, signals)
                        exit_code = EXIT_INTERRUPTED
                        return [runio.read_json(m.out_dir / runio.RESULTS) for m in active]
                    self._step(active)
                    last = self.step == self.tcfg.max_steps
                    if self.step % self.tcfg.eval_every == 0 or last:
                        self._evaluate_all(active, time.perf_counter() - t0)
                        t0 = time.perf_counter()
                        self._show_progress(progress, active)
                    if self.step % self.tcfg.checkpoint_every == 0 and not last:
                        self.save_checkpoint()
                if progress is not None:
                    progress.close()
                done = [m for m in self.members if m.tracker.status == "running"]
                for m in done:
                    m.tracker.status = "completed"
                    m.tracker.message = f"budget of {self.tcfg.max_steps} steps used"
                # the checkpoint first: results.json never claims more than the checkpoint holds
                self.save_checkpoint()
                for m in done:
                    outputs.finish(self, m)
                return [runio.read_json(m.out_dir / runio.RESULTS) for m in self.members]
            except BaseException:
                exit_code = 1
                raise
            finally:
                for m in self.members:
                    if m.wandb is not None:
                        m.wandb.finish(exit_code=exit_code)
                self._release()

    # ------------------------------------------------------------------ evaluation
    def _evaluate_all(self, members: list[Member], dt: float) -> None:
        for m in members:
            m.wall_time += dt / len(members)
            self._evaluate(m)
        finished = [m for m in members if not m.active]
        if finished:
            # the checkpoint first: results.json never claims more than the checkpoint holds
            self.save_checkpoint()
            for m in finished:
                outputs.finish(self, m)

    @torch.no_grad()
    def _metrics(self, m: Member) -> dict[str, Any]:
        d, task, tol = m.data, m.data.task, self.tcfg.regression_tol
        m.model.eval()
        row: dict[str, Any] = {"step": self.step}
        for split, x, y in (("train", d.x_train, d.y_train), ("val", d.x_val, d.y_val)):
            out = m.model(x)
            row[f"{split}_loss"] = compute_loss(out, y, self.loss_kind, task)
            row[f"{split}_acc"] = correct(out, y, task, tol).mean()
        m.model.train()
        row["weight_norm"] = weight_norm(m.model)
        grads = [p.grad for p in m.model.parameters() if p.grad is not None]
        if grads:
            row["grad_norm"] = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
        sol = d.extras.get("min_norm_solution") if d.extras else None
        if sol is not None:
            w = torch.cat([p.detach().reshape(-1) for p in m.model.parameters()])
            if w.numel() == sol.numel():
                s = sol.to(w).reshape(-1)
                row["dist_min_norm"] = torch.linalg.vector_norm(w - s) / torch.linalg.vector_norm(s)
        # one host transfer for all scalars of this evaluation
        keys = [k for k, v in row.items() if isinstance(v, torch.Tensor)]
        values = torch.stack([row[k].float().reshape(()) for k in keys]).tolist()
        row.update(zip(keys, values, strict=True))
        row["phase"] = phase_of(m.optimizer)
        group = m.optimizer.param_groups[0]
        row["lr"] = float(group["lr"])
        mom = group.get("momentum_used", group.get("momentum"))
        if isinstance(mom, (int, float)):
            row["momentum"] = float(mom)
        return row

    def _evaluate(self, m: Member) -> None:
        row = self._metrics(m)
        tr = m.tracker
        events = observe(
            m.optimizer,
            self.step,
            train_acc=row["train_acc"],
            train_loss=row["train_loss"],
            grad_norm=row.get("grad_norm"),
            weight_norm=row["weight_norm"],
            closure=self.loss_closure(m),
        )
        if any(ev.get("weights_changed") for ev in events):
            row = self._metrics(m)  # rolled back: report the restored weights
        for ev in events:
            if ev.get("event") == "switch" and tr.t_switch is None:
                tr.t_switch = ev.get("step", self.step)
                row["phase"] = phase_of(m.optimizer)
                row["lr"] = float(m.optimizer.param_groups[0]["lr"])
        tr.events.extend(events)
        tr.update(row, self.tcfg)
        tr.finish_if_reached(self.tcfg)
        tr.last = row
        m.log.append(row)
        if m.wandb is not None:
            m.wandb.log(row, step=self.step)

    def _progress_bar(self) -> Any:
        if not self.tcfg.progress or not sys.stderr.isatty():
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.tcfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True)

    def _show_progress(self, progress: Any, active: list[Member]) -> None:
        if progress is None:
            now = time.monotonic()
            tenth = max(1, self.tcfg.max_steps // 10)
            crossed = self.step // tenth > self._last_progress_step // tenth
            if self.tcfg.progress and (crossed or now - self._last_progress >= PROGRESS_EVERY_S):
                self._last_progress, self._last_progress_step = now, self.step
                m0 = active[0].tracker.last
                log.info(
                    "step %d/%d | %d running | phase %s | train_acc %.3f | val_acc %.3f | "
                    "norm %.2f",
                    self.step,
                    self.tcfg.max_steps,
                    len(active),
                    m0.get("phase"),
                    m0.get("train_acc", 0.0),
                    m0.get("val_acc", 0.0),
                    m0.get("weight_norm", 0.0),
                )
            return
        progress.update(self.step - progress.n)
        m0 = active[0].tracker.last
        progress.set_postfix(
            train=f"{m0.get('train_acc', 0):.3f}",
            val=f"{m0.get('val_acc', 0):.3f}",
            phase=m0.get("phase"),
        )

    # ------------------------------------------------------------------ checkpoints, signals
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / runio.CHECKPOINT

    def save_checkpoint(self) -> None:
        state = checkpoint.state(self.step, self.seeds, self.config_dict, self.members)
        runio.save_checkpoint(self.checkpoint_path, state)

    def check_resume(self) -> dict[str, Any] | None:
        """The checkpoint this run resumes from (None: a fresh start), checked before any work."""
        if not self._resume_checked:
            mode = str(self.tcfg.resume).lower()
            self._resume_state = checkpoint.find(
                self.checkpoint_path,
                mode,
                self.seeds,
                self.config_dict,
                self.tcfg.max_steps,
                batched=self.batched_member,
            )
            self._resume_checked = True
        return self._resume_state

    def prepare(self) -> None:
        """Checks before any work: the checkpoint to resume (if any) and the run-directory lock."""
        self.check_resume()
        if self._lock is None:
            lock = runio.RunLock(self.run_dir)
            lock.acquire()
            self._lock = lock

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _maybe_resume(self) -> bool:
        state = self.check_resume()
        self._resume_state = None
        if state is None:
            self._start_clean()
            return False
        for d in {self.run_dir, *(m.out_dir for m in self.members)}:
            runio.remove_stale_temporaries(d)  # left by a crash mid-write
        self.step = checkpoint.restore(self.members, state, self.tcfg.max_steps)
        log.info("resumed from %s at step %d", self.checkpoint_path, self.step)
        return True

    def _start_clean(self) -> None:
        """A fresh start never appends to an earlier run's files: they are moved aside."""
        names = (runio.RESULTS, runio.METRICS, runio.CHECKPOINT, runio.CONFIG, "curves.png")
        for d in dict.fromkeys([self.run_dir, *(m.out_dir for m in self.members)]):
            moved = runio.move_aside(d, names)
            if moved is not None:
                log.warning("an earlier run's files in %s were moved to %s", d, moved)

    def _interrupt(self, active: list[Member], dt: float, signals: StopSignals) -> None:
        """Checkpoint, record the interruption, then let the launcher requeue the job."""
        for m in active:
            m.wall_time += dt / len(active)
        self.save_checkpoint()  # "running": a resume continues the run
        for m in active:
            m.tracker.status = "interrupted"
            m.tracker.message = f"signal {self._stop_signal} at step {self.step}; resumable"
            runio.write_json(m.out_dir / runio.RESULTS, outputs.results(self, m))
            m.tracker.status = "running"
            m.tracker.message = ""
        self.exit_code = EXIT_INTERRUPTED
        signals.chain(self._stop_signal)
