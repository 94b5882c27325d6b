"""The training loop: one run, or K seeds trained side by side as one batched ensemble.

Flat and direct, like the reference grokking code: the whole data set lives on the device as
tensors, each step is ``zero_grad -> loss -> backward -> (filter) -> step``, and nothing is read
back to the host except at evaluation steps. Each member (seed) has its own data split,
initialisation, optimizer (with its own phase switch) and output directory holding
``config.yaml``, ``metrics.jsonl``, ``results.json`` and ``curves.png`` exactly as a single run.

Evaluation at step t uses the parameters after t updates; t=0 is the initialisation.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from groktimizer.experiment import runio
from groktimizer.experiment.builders import build_filter, build_optimizer
from groktimizer.experiment.data import TaskData

EXIT_INTERRUPTED = 143  # 128 + SIGTERM: schedulers treat it as "killed", submitit requeues


@dataclass
class Tracker:
    """Milestones of one run (the paper's metric names)."""

    t_interp: int | None = None
    t_switch: int | None = None
    t_gen95: int | None = None
    t_gen99: int | None = None
    t_target: int | None = None
    best_val_acc: float = 0.0
    status: str = "running"
    message: str = ""
    last: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


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


def loss_kind(task: str, cfg_loss: str) -> str:
    if cfg_loss == "auto":
        return "cross_entropy" if task == "classification" else "mse"
    return cfg_loss


def compute_loss(out: torch.Tensor, y: torch.Tensor, kind: str, task: str) -> torch.Tensor:
    if kind == "cross_entropy":
        if task != "classification":
            raise ValueError("trainer.loss='cross_entropy' needs a classification dataset")
        return F.cross_entropy(out.float() if out.dtype == torch.half else out, y)
    if task == "classification":  # MSE on one-hot targets (Omnigrok's MNIST setup)
        target = F.one_hot(y, out.shape[-1]).to(out.dtype)
        return F.mse_loss(out, target)
    return F.mse_loss(out, y.reshape(out.shape))


def correct(out: torch.Tensor, y: torch.Tensor, task: str, tol: float) -> torch.Tensor:
    """Per-example correctness: argmax for classes, |residual| <= tol for regression."""
    if task == "classification":
        return (out.argmax(-1) == y).float()
    return ((out - y.reshape(out.shape)).abs().reshape(out.shape[0], -1).amax(-1) <= tol).float()


def weight_norm(model: nn.Module) -> torch.Tensor:
    return torch.sqrt(sum((p.detach().float() ** 2).sum() for p in model.parameters()))


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
        # everything is built (and validated) before any file is written
        self.members = [self._build_member(s) for s in self.seeds]
        self.loss_kind = loss_kind(self.members[0].data.task, self.tcfg.loss)
        if self.loss_kind == "cross_entropy" and self.members[0].data.task != "classification":
            raise ValueError(
                f"trainer.loss='cross_entropy' needs a classification dataset; "
                f"{self.members[0].data.name!r} is {self.members[0].data.task}"
            )
        self._wandb_factory = wandb_factory
        self._vmap = self.ensemble and self.tcfg.ensemble == "vmap" and len(self.members) > 1
        if self._vmap:
            self._setup_vmap()

    # ------------------------------------------------------------------ building
    def _build_member(self, seed: int) -> Member:
        from hydra.utils import instantiate

        cfg = self.cfg
        data = instantiate(cfg.dataset)(seed=seed).to(self.device, self.dtype)
        torch.manual_seed(seed)
        model = instantiate(cfg.model)(data).to(device=self.device, dtype=self.dtype)
        if self.tcfg.compile:
            model = torch.compile(model)
        optimizer = build_optimizer(cfg.optimizer, cfg.schedule, model)
        grad_filter = build_filter(cfg.grad_filter)
        out_dir = self.run_dir / f"seed_{seed}" if self.ensemble else self.run_dir
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)
        return Member(
            seed=seed,
            data=data,
            model=model,
            optimizer=optimizer,
            grad_filter=grad_filter,
            out_dir=out_dir,
            log=runio.MetricsLog(out_dir / runio.METRICS),
            tracker=Tracker(),
            generator=gen,
        )

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
            losses = self._vmapped_loss(params, xs, ys)
            losses.sum().backward()
        else:
            for m in members:
                x, y = self._batch(m)
                compute_loss(m.model(x), y, self.loss_kind, m.data.task).backward()

    def train(self) -> list[dict[str, Any]]:
        """Run to the end (or a stop signal); returns each member's results dict."""
        self._install_signal_handlers()
        resumed = self._maybe_resume()
        self._write_configs()
        self._start_wandb()
        exit_code = 0
        try:
            if not resumed:
                for m in self.members:
                    self._evaluate(m)
                    if not m.active:  # e.g. the target reached at initialisation
                        self._finish(m)
            progress = self._progress_bar()
            t0 = time.perf_counter()
            while self.step < self.tcfg.max_steps:
                active = [m for m in self.members if m.active]
                if not active:
                    break
                if self._stop_signal is not None:
                    self._interrupt(active, time.perf_counter() - t0)
                    exit_code = EXIT_INTERRUPTED
                    return [runio.read_json(m.out_dir / runio.RESULTS) for m in active]
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
                last = self.step == self.tcfg.max_steps
                if self.step % self.tcfg.eval_every == 0 or last:
                    dt = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    for m in active:
                        m.wall_time += dt / len(active)
                        self._evaluate(m)
                        if not m.active:
                            self._finish(m)
                    if progress is not None:
                        progress.update(self.step - progress.n)
                        m0 = active[0].tracker.last
                        progress.set_postfix(
                            train=f"{m0.get('train_acc', 0):.3f}",
                            val=f"{m0.get('val_acc', 0):.3f}",
                            phase=m0.get("phase"),
                        )
                if self.step % self.tcfg.checkpoint_every == 0 and not last:
                    self.save_checkpoint()
            if progress is not None:
                progress.close()
            for m in self.members:
                if m.tracker.status == "running":
                    m.tracker.status = "completed"
                    m.tracker.message = f"budget of {self.tcfg.max_steps} steps used"
                    self._finish(m)
            self.save_checkpoint()
            return [runio.read_json(m.out_dir / runio.RESULTS) for m in self.members]
        except BaseException:
            exit_code = 1
            raise
        finally:
            self._restore_signal_handlers()
            for m in self.members:
                if m.wandb is not None:
                    m.wandb.finish(exit_code=exit_code)

    # ------------------------------------------------------------------ evaluation
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
        row["phase"] = getattr(m.optimizer, "phase", 1)
        group = m.optimizer.param_groups[0]
        row["lr"] = float(group["lr"])
        mom = group.get("momentum_used", group.get("momentum"))
        if isinstance(mom, (int, float)):
            row["momentum"] = float(mom)
        return row

    def _evaluate(self, m: Member) -> None:
        row = self._metrics(m)
        # a guarded phase 2 (groktimizer.guard) sees the loss before divergence is declared
        if hasattr(m.optimizer, "guard_observe") and m.optimizer.guard_observe(
            self.step, row["train_loss"]
        ):
            row = self._metrics(m)  # rolled back: report the restored weights
        tr, step, t = m.tracker, self.step, self.tcfg
        finite = all(
            math.isfinite(row[k]) for k in ("train_loss", "weight_norm") if row.get(k) is not None
        )
        too_big = t.max_loss is not None and finite and row["train_loss"] > t.max_loss
        if tr.t_interp is None and row["train_acc"] >= t.interp_threshold:
            tr.t_interp = step
        if tr.t_gen95 is None and row["val_acc"] >= 0.95:
            tr.t_gen95 = step
        if tr.t_gen99 is None and row["val_acc"] >= 0.99:
            tr.t_gen99 = step
        if tr.t_target is None and row["val_acc"] >= t.target_val_acc:
            tr.t_target = step
        tr.best_val_acc = max(tr.best_val_acc, row["val_acc"])
        if not finite or too_big:
            tr.status = "diverged"
            tr.message = (
                f"train loss {row['train_loss']} / weight norm {row['weight_norm']} "
                f"became non-finite or exceeded trainer.max_loss at step {step} "
                f"(phase {row['phase']}, lr {row['lr']:.3g})"
            )
        elif hasattr(m.optimizer, "observe") and getattr(m.optimizer, "phase", 2) == 1:
            switched = m.optimizer.observe(
                step=step,
                train_acc=row["train_acc"],
                train_loss=row["train_loss"],
                grad_norm=row.get("grad_norm"),
                weight_norm=row["weight_norm"],
                closure=self._curvature_closure(m),
            )
            if switched:
                tr.t_switch = step
                event = {"step": step, "event": "switch"}
                record = getattr(m.optimizer, "auto_lr_record", None)
                if record:
                    event.update({f"auto_{k}": v for k, v in record.items()})
                tr.events.append(event)
                row["phase"] = 2
                row["lr"] = float(m.optimizer.param_groups[0]["lr"])
        for ev in getattr(m.optimizer, "pop_events", lambda: [])():
            tr.events.append(ev)
        if tr.status == "running" and t.stop_at_target and tr.t_target is not None:
            tr.status = "reached-target"
            tr.message = f"val_acc >= {t.target_val_acc} at step {tr.t_target}"
        tr.last = row
        m.log.append(row)
        if m.wandb is not None:
            m.wandb.log(row, step=step)

    def _curvature_closure(self, m: Member) -> Any:
        def closure() -> torch.Tensor:
            out = m.model(m.data.x_train)
            return compute_loss(out, m.data.y_train, self.loss_kind, m.data.task)

        return closure

    # ------------------------------------------------------------------ outputs
    def _member_config(self, m: Member) -> dict[str, Any]:
        cfg = dict(self.config_dict)
        cfg["seed"] = m.seed
        return cfg

    def _write_configs(self) -> None:
        import yaml

        for m in self.members:
            m.out_dir.mkdir(parents=True, exist_ok=True)
            runio.write_text(
                m.out_dir / runio.CONFIG, yaml.safe_dump(self._member_config(m), sort_keys=False)
            )

    def _results(self, m: Member) -> dict[str, Any]:
        tr, last = m.tracker, m.tracker.last
        res: dict[str, Any] = {
            "status": tr.status,
            "message": tr.message,
            "seed": m.seed,
            "steps": self.step if tr.status != "diverged" else last.get("step", self.step),
            "max_steps": self.tcfg.max_steps,
            "t_interp": tr.t_interp,
            "t_switch": tr.t_switch,
            "t_gen95": tr.t_gen95,
            "t_gen99": tr.t_gen99,
            "t_target": tr.t_target,
            "grokking_delay": (
                tr.t_gen99 - tr.t_interp
                if tr.t_gen99 is not None and tr.t_interp is not None
                else None
            ),
            "final_train_acc": last.get("train_acc"),
            "final_val_acc": last.get("val_acc"),
            "final_train_loss": last.get("train_loss"),
            "final_val_loss": last.get("val_loss"),
            "final_weight_norm": last.get("weight_norm"),
            "best_val_acc": tr.best_val_acc,
            "wall_time_s": m.wall_time,
            "events": tr.events,
            "experiment_name": self.cfg.experiment_name,
            "overrides": _hydra_overrides(),
            "config": self._member_config(m),
            "code": self._code,
            "device": str(self.device),
        }
        if "dist_min_norm" in last:
            res["final_dist_min_norm"] = last["dist_min_norm"]
        return res

    def _finish(self, m: Member) -> dict[str, Any]:
        res = self._results(m)
        if self.tcfg.sharpness and m.tracker.status != "diverged":
            from groktimizer.curvature import top_eigenvalue

            eig, iters = top_eigenvalue(
                self._curvature_closure(m),
                [p for p in m.model.parameters() if p.requires_grad],
                iters=self.tcfg.sharpness_iters,
            )
            res["sharpness"] = float(eig)
            res["sharpness_iters"] = int(iters)
        runio.write_json(m.out_dir / runio.RESULTS, res)
        if self.tcfg.plots:
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

    @property
    def _code(self) -> dict[str, Any]:
        if not hasattr(self, "_code_cache"):
            self._code_cache = runio.code_version()
        return self._code_cache

    def _start_wandb(self) -> None:
        lg = self.cfg.logger
        if lg.kind != "wandb":
            return
        from groktimizer.experiment.wandb_logger import WandbRun

        factory = self._wandb_factory or WandbRun
        for m in self.members:
            name = f"{self.cfg.experiment_name}-s{m.seed}-{self.run_dir.name}"
            m.wandb = factory(
                mode=lg.mode,
                project=lg.project,
                entity=lg.entity,
                group=lg.group or self.cfg.experiment_name,
                tags=list(lg.tags),
                job_type=lg.job_type,
                name=name,
                config=self._member_config(m),
                directory=str(m.out_dir),
            )

    def _progress_bar(self) -> Any:
        if not self.tcfg.progress or not sys.stderr.isatty():
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.tcfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / runio.CHECKPOINT

    def save_checkpoint(self) -> None:
        state = {
            "step": self.step,
            "seeds": self.seeds,
            "config": _run_defining_config(self.config_dict),
            "members": [
                {
                    "seed": m.seed,
                    "model": m.model.state_dict(),
                    "optimizer": m.optimizer.state_dict(),
                    "grad_filter": m.grad_filter.state_dict() if m.grad_filter else None,
                    "tracker": m.tracker.state_dict(),
                    "generator": m.generator.get_state(),
                    "wall_time": m.wall_time,
                }
                for m in self.members
            ],
        }
        runio.save_checkpoint(self.checkpoint_path, state)

    def check_resume(self) -> dict[str, Any] | None:
        """The checkpoint this run resumes from (None: a fresh start), checked before any work.

        Refuses (one-line error) a missing checkpoint with resume=true, an unreadable one, and
        one written by a run with other seeds or another config: resuming it would report that
        run's results under this run's config (e.g. a sweep re-run into the same folder).
        """
        if hasattr(self, "_resume_state"):
            return self._resume_state
        mode = str(self.tcfg.resume).lower()
        path = self.checkpoint_path
        state = None
        if mode == "true" and not path.exists():
            raise FileNotFoundError(
                f"trainer.resume=true but there is no checkpoint at {path}; "
                "pass hydra.run.dir=<the run's directory>"
            )
        if mode != "false" and path.exists():
            state = runio.load_checkpoint(path)
            if list(state["seeds"]) != self.seeds:
                raise ValueError(
                    f"checkpoint {path} holds seeds {state['seeds']}, this run has {self.seeds}; "
                    "use another hydra.run.dir or trainer.resume=false"
                )
            if "config" in state:
                ours = _run_defining_config(self.config_dict)
                diff = sorted(
                    k
                    for k in set(ours) | set(state["config"])
                    if ours.get(k) != state["config"].get(k)
                )
                if diff:
                    k = diff[0]
                    raise ValueError(
                        f"checkpoint {path} was written with {k}={state['config'].get(k)!r}, "
                        f"this run has {k}={ours.get(k)!r} ({len(diff)} keys differ); "
                        "use another hydra.run.dir, or trainer.resume=false to start over"
                    )
        self._resume_state = state
        return state

    def _maybe_resume(self) -> bool:
        path = self.checkpoint_path
        state = self.check_resume()
        del self._resume_state
        if state is None:
            return False
        for d in {self.run_dir, *(m.out_dir for m in self.members)}:
            runio.remove_stale_temporaries(d)  # left by a crash mid-write
        self.step = int(state["step"])
        for m, s in zip(self.members, state["members"], strict=True):
            m.model.load_state_dict(s["model"])
            m.optimizer.load_state_dict(s["optimizer"])
            if m.grad_filter is not None and s["grad_filter"] is not None:
                m.grad_filter.load_state_dict(s["grad_filter"])
            m.tracker.load_state_dict(s["tracker"])
            m.generator.set_state(s["generator"])
            m.wall_time = float(s["wall_time"])
            m.log.truncate_after(self.step)
        print(f"resumed from {path} at step {self.step}", file=sys.stderr)
        return True

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> None:
        self._previous_handlers = {}
        for sig in (signal.SIGTERM, signal.SIGUSR2):
            try:
                self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not in the main thread (e.g. some launchers)
                pass

    def _restore_signal_handlers(self) -> None:
        # after train() a SIGTERM must stop the process again, not set a flag nobody reads
        for sig, prev in getattr(self, "_previous_handlers", {}).items():
            try:
                signal.signal(sig, prev)
            except (ValueError, TypeError):
                pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum

    def _interrupt(self, active: list[Member], dt: float) -> None:
        """Checkpoint, record the interruption, then let the launcher requeue the job."""
        for m in active:
            m.wall_time += dt / len(active)
            m.tracker.status = "interrupted"
            m.tracker.message = f"signal {self._stop_signal} at step {self.step}; resumable"
            runio.write_json(m.out_dir / runio.RESULTS, self._results(m))
            # the checkpoint keeps "running": a resume continues the run
            m.tracker.status = "running"
            m.tracker.message = ""
        self.save_checkpoint()
        self.exit_code = EXIT_INTERRUPTED
        prev = self._previous_handlers.get(self._stop_signal)
        if callable(prev):
            prev(self._stop_signal, None)


# keys a resumed run may change: they do not change its numbers
_RESUME_MAY_CHANGE = (
    "trainer.resume",
    "trainer.progress",
    "trainer.plots",
    "trainer.max_steps",
    "trainer.checkpoint_every",
    "trainer.device",
    "trainer.compile",
    "trainer.sharpness",
    "trainer.sharpness_iters",
    "logger.",
    "experiment_name",
)


def _run_defining_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config flattened to dotted keys, without the keys a resume may change."""
    flat: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if key.startswith(_RESUME_MAY_CHANGE):
            continue
        if isinstance(v, dict):
            flat.update(_run_defining_config(v, key + "."))
        else:
            flat[key] = list(v) if isinstance(v, tuple) else v
    return flat


def _hydra_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 -- not under Hydra (tests, notebooks)
        return []
