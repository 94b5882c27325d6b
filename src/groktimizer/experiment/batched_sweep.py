"""Sweeps as batches: the jobs of a multirun that differ only in optimizer settings and seeds,
trained as one job with one :class:`groktimizer.batched.BatchedOptimizer` step for all members.

Each job keeps its own :class:`~groktimizer.experiment.trainer.Trainer` (its config, run
directory, data, model, milestones, checkpoint, W&B run and output files, exactly as a plain
job); only the hot loop is shared: the members' parameters are stacked ``[K, ...]`` (each model's
parameters are views of its slice), the forward/backward runs per member (CPU) or vmapped over
the stack (CUDA, ``trainer.ensemble``), and one batched step updates all members, each with its
own hyperparameters, phase and switch. Evaluation, the switch criterion, results and checkpoints
go through each Trainer's own code, so every job's files read as a plain job's.

What may differ inside a group (:func:`group_key`): the seed(s) and any value under
``optimizer``, ``schedule`` and ``grad_filter`` except the classes (``_target_``). Jobs that differ
in anything else form separate groups; a group of one single-seed job runs as a plain job; a group
the batch cannot express (``lr: auto``, a guard, ``trainer.compile``, an optimizer class the
batch does not implement, MA filters of different windows) runs its jobs one after another as
plain jobs, with one log line saying why.

A checkpoint written here holds the member's slice of the batch's optimizer state: it resumes
under ``launcher=batched`` (a plain re-run refuses it with one line).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from groktimizer.batched import BatchedOptimizer, MemberSpec, member_spec, stack_modules
from groktimizer.experiment import outputs, runio
from groktimizer.experiment.builders import instantiate_node, param_groups
from groktimizer.experiment.metrics import compute_loss
from groktimizer.experiment.preemption import EXIT_INTERRUPTED, StopSignals
from groktimizer.wrapper import OptimizerWrapper

log = logging.getLogger(__name__)

# config subtrees whose values (not classes) may differ between the members of one batch
BATCHED_GROUPS = ("optimizer", "schedule", "grad_filter")


# ---------------------------------------------------------------------------------- grouping
def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def batchable(key: str) -> bool:
    """True for a dotted config key whose value may differ between members of one batch."""
    if key in ("seed", "trainer.seeds"):
        return True
    top = key.split(".", 1)[0]
    return top in BATCHED_GROUPS and not key.endswith(("._target_", "._partial_"))


def group_key(config: dict[str, Any]) -> str:
    """The resolved task config (a plain dict) without what may differ inside a batch."""
    flat = {k: v for k, v in _flat(config).items() if not batchable(k)}
    return json.dumps(flat, sort_keys=True, default=str)


def members_of(config: dict[str, Any]) -> int:
    seeds = config.get("trainer", {}).get("seeds")
    return len(seeds) if seeds is not None else 1


def plan(configs: Sequence[dict[str, Any] | None], max_members: int = 0) -> list[list[int]]:
    """Job indices grouped for batching, in sweep order; ``None`` (unresolvable) is alone.

    ``max_members`` > 0 splits a group so that none holds more members (seeds) than that.
    """
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        key = f"unresolved-{i}" if cfg is None else group_key(cfg)
        groups.setdefault(key, []).append(i)
    out: list[list[int]] = []
    for idx in groups.values():
        chunk: list[int] = []
        n = 0
        for i in idx:
            k = members_of(configs[i]) if configs[i] is not None else 1
            if chunk and max_members > 0 and n + k > max_members:
                out.append(chunk)
                chunk, n = [], 0
            chunk.append(i)
            n += k
        out.append(chunk)
    return sorted(out, key=lambda g: g[0])


# ---------------------------------------------------------------------------------- one member
class MemberOptimizer(OptimizerWrapper):
    """Member ``k`` of a BatchedOptimizer seen as the optimizer of its own run: its phase, its
    ``param_groups[0]`` lr / momentum as the library optimizer reports them, its switch, and its
    slice of the state for the run's checkpoint. Steps are taken by the batch, never here."""

    def __init__(self, batch: BatchedOptimizer, k: int) -> None:
        super().__init__()
        self.batch, self.k = batch, k

    @property
    def current(self) -> Any:
        return self

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [self.batch.member_group(self.k)]

    @property
    def state(self) -> Any:  # type: ignore[override]
        return {}

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.param_groups[0]

    @property
    def phase(self) -> int | None:
        return self.batch.member_row(self.k)["phase"]

    def step(self, closure: Any = None) -> Any:  # noqa: ARG002
        raise RuntimeError("MemberOptimizer: the batch steps all members (BatchedOptimizer.step)")

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: ARG002
        raise RuntimeError("MemberOptimizer: zero the batch's gradients (BatchedOptimizer)")

    def observe(self, step: int, **metrics: Any) -> list[dict[str, Any]]:
        metrics.pop("closure", None)  # as GROKtimizer: the criterion never sees the closure
        return self.batch.observe_member(self.k, step, **metrics)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return self.batch.member_state_dict(self.k)

    def load_state_dict(self, state: dict[str, Any]) -> None:  # type: ignore[override]
        self.batch.load_member_state_dict(self.k, state)


def spec_of(cfg: Any) -> MemberSpec:
    """The MemberSpec of a run's config; ValueError (one line) where the batch cannot run it."""
    if cfg.trainer.get("compile"):
        raise ValueError("trainer.compile=true (compiled members are not batched)")
    if instantiate_node(cfg.guard, "guard") is not None:
        raise ValueError(f"guard={cfg.guard.get('_target_')} (a guard wraps one optimizer)")
    make = instantiate_node(cfg.optimizer, "optimizer")
    schedule = instantiate_node(cfg.schedule, "schedule")
    grad_filter = instantiate_node(cfg.grad_filter, "grad_filter")
    return member_spec(make, schedule, grad_filter)


def no_decay_flags(cfg: Any, model: torch.nn.Module) -> list[bool]:
    """Per parameter (``named_parameters`` order): True where ``cfg.no_decay`` excludes it."""
    groups = param_groups(model, 1.0, list(cfg.no_decay))
    off = {id(p) for g in groups if g.get("weight_decay", 1.0) == 0 for p in g["params"]}
    return [id(p) in off for p in model.parameters()]


class _NoChain:
    """The signal handlers a Trainer's interrupt would chain to: once for the group, not per job."""

    def chain(self, signum: int) -> None:
        pass


# ---------------------------------------------------------------------------------- the group
class BatchedGroup:
    """Trainers (one per job, each with its own members) trained as one batch.

    ``contexts[i]`` (optional) is entered around everything that writes job i's files (under
    Hydra: its job config, so results.json records that job's overrides and choices).
    """

    def __init__(self, trainers: Sequence[Any], contexts: Sequence[Any] | None = None) -> None:
        self.trainers = list(trainers)
        for t in self.trainers:
            t.batched_member = True  # they resume from batched checkpoints only
        self.contexts = list(contexts) if contexts is not None else [None] * len(self.trainers)
        first = self.trainers[0]
        tc = first.tcfg
        self.max_steps, self.eval_every = int(tc.max_steps), int(tc.eval_every)
        self.checkpoint_every = int(tc.checkpoint_every)
        for t in self.trainers[1:]:
            same = (t.tcfg.max_steps, t.tcfg.eval_every, t.device, t.dtype, t.loss_kind) == (
                tc.max_steps,
                tc.eval_every,
                first.device,
                first.dtype,
                first.loss_kind,
            )
            if not same:
                raise ValueError(f"{t.run_dir}: budget, evaluation, device or loss differ")
        self.pairs = [(t, m) for t in self.trainers for m in t.members]
        specs = [spec_of(t.cfg) for t, _ in self.pairs]
        # refused combinations (e.g. MA filters of different windows) fail before the models
        # are tied to the stack, so the jobs can still run one by one
        BatchedOptimizer([torch.zeros(len(specs), 1)], specs)
        steps = self.resume_steps()
        if len(steps) > 1:
            raise ValueError(f"the jobs' checkpoints are at different steps {sorted(steps)}")
        models = [m.model for _, m in self.pairs]
        no_decay = no_decay_flags(first.cfg, models[0])
        self.stacked = stack_modules(models)
        clip = tc.grad_clip
        self.opt = BatchedOptimizer(
            list(self.stacked.values()),
            specs,
            no_decay=no_decay,
            max_grad_norm=None if clip is None else float(clip),
        )
        for k, (_, m) in enumerate(self.pairs):
            m.optimizer = MemberOptimizer(self.opt, k)
            m.grad_filter = None  # the batch filters each member's gradient (its state is in the
            # member's optimizer slice of the checkpoint)
        mode = tc.ensemble
        if mode == "auto":
            mode = "vmap" if first.device.type == "cuda" else "loop"
        self.vmap = mode == "vmap" and len(self.pairs) > 1
        if self.vmap:
            self._setup_vmap()
        self.exit_code = 0
        self._stop_signal: int | None = None

    @contextlib.contextmanager
    def _job(self, t: Any) -> Iterator[None]:
        ctx = self.contexts[self.trainers.index(t)]
        if ctx is None:
            yield
        else:
            with ctx():
                yield

    def _link_grads(self, on: bool) -> None:
        """Each member's ``.grad`` as a view of the stack's gradient (on), or None (off)."""
        for i, (_, m) in enumerate(self.pairs):
            for p, s in zip(m.model.parameters(), self.stacked.values(), strict=True):
                p.grad = s.grad[i] if on else None

    def _setup_vmap(self) -> None:
        from torch.func import functional_call, vmap

        t0, m0 = self.pairs[0]
        base, buffers = m0.model, dict(m0.model.named_buffers())
        kind, task = t0.loss_kind, m0.data.task

        def member_loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
            return compute_loss(functional_call(base, (params, buffers), (x,)), y, kind, task)

        self._vmapped_loss = vmap(member_loss)

    def _forward_backward(self, active: list[tuple[Any, Any]]) -> None:
        if self.vmap:
            on = {id(m) for _, m in active}
            batches = []
            for t, m in self.pairs:
                if id(m) in on:
                    batches.append(t._batch(m))
                else:  # finished: its gradient is masked out; no draw from its generator
                    bs = t.tcfg.batch_size or m.data.x_train.shape[0]
                    batches.append((m.data.x_train[:bs], m.data.y_train[:bs]))
            xs = torch.stack([b[0] for b in batches])
            ys = torch.stack([b[1] for b in batches])
            self._vmapped_loss(self.stacked, xs, ys).sum().backward()
            return
        for t, m in active:
            x, y = t._batch(m)
            compute_loss(m.model(x), y, t.loss_kind, m.data.task).backward()

    def resume_steps(self) -> set[int]:
        steps = set()
        for t in self.trainers:
            st = t.check_resume()
            steps.add(0 if st is None else int(st["step"]))
        return steps

    def train(self) -> list[list[dict[str, Any]]]:
        """Train every job to the end (or a stop signal); each job's results dicts."""
        exit_code = 0
        started: list[Any] = []
        with StopSignals(self) as signals:
            try:
                self._link_grads(False)  # no gradient before the first step, as a plain run
                for t in self.trainers:
                    t.prepare()
                    with self._job(t):
                        resumed = t._maybe_resume()
                        outputs.write_configs(t)
                        started.append(t)
                        outputs.start_wandb(t, t._wandb_factory)
                        if not resumed:
                            t._evaluate_all(t.members, 0.0)
                self._link_grads(True)
                return self._loop(signals)
            except BaseException:
                exit_code = 1
                raise
            finally:
                for t in started:
                    for m in t.members:
                        if m.wandb is not None:
                            m.wandb.finish(exit_code=exit_code)
                for t in self.trainers:
                    t._release()

    def _loop(self, signals: StopSignals) -> list[list[dict[str, Any]]]:
        step = self.trainers[0].step
        was_active: list[bool] | None = None
        tenth = max(1, self.max_steps // 10)
        t0 = time.perf_counter()
        while step < self.max_steps:
            active = [(t, m) for t, m in self.pairs if m.active]
            if not active:
                break
            live = list(dict.fromkeys(t for t, _ in active))
            if self._stop_signal is not None:
                return self._interrupt(live, active, time.perf_counter() - t0, signals)
            mask = [m.active for _, m in self.pairs]
            if mask != was_active:
                self.opt.set_active(mask)
                was_active = mask
            self.opt.zero_grad()
            self._forward_backward(active)
            self.opt.step()
            step += 1
            for t in live:
                t.step = step
            last = step == self.max_steps
            if step % self.eval_every == 0 or last:
                dt = time.perf_counter() - t0
                for t in live:
                    mine = [m for tt, m in active if tt is t]
                    with self._job(t):
                        t._evaluate_all(mine, dt * len(mine) / len(active))
                t0 = time.perf_counter()
            if step % self.checkpoint_every == 0 and not last:
                for t in live:
                    t.save_checkpoint()
            if step % tenth == 0 and self.trainers[0].tcfg.progress:
                log.info("batched step %d/%d | %d of %d members running", step,
                         self.max_steps, len(active), len(self.pairs))  # fmt: skip
        for t in self.trainers:
            done = [m for m in t.members if m.tracker.status == "running"]
            for m in done:
                m.tracker.status = "completed"
                m.tracker.message = f"budget of {self.max_steps} steps used"
            # the checkpoint first: results.json never claims more than the checkpoint holds
            t.save_checkpoint()
            with self._job(t):
                for m in done:
                    outputs.finish(t, m)
        return [
            [runio.read_json(m.out_dir / runio.RESULTS) for m in t.members] for t in self.trainers
        ]

    def _interrupt(self, live, active, dt: float, signals: StopSignals):
        sig = self._stop_signal
        for t in live:
            mine = [m for tt, m in active if tt is t]
            t._stop_signal = sig
            with self._job(t):
                t._interrupt(mine, dt * len(mine) / len(active), _NoChain())
        self.exit_code = EXIT_INTERRUPTED
        signals.chain(sig)
        on = {id(m) for _, m in active}
        return [
            [runio.read_json(m.out_dir / runio.RESULTS) for m in t.members if id(m) in on]
            for t in self.trainers
        ]


def train_group(trainers: Sequence[Any], contexts: Sequence[Any] | None = None) -> list[Any]:
    """Train `trainers` as one batch when it can express them, else one after another.

    Returns, per trainer, its results list, or the error that stopped it: an OSError (its writes
    failed) or a ValueError (a checkpoint the batch cannot resume, e.g. a plain run's).
    """
    contexts = list(contexts) if contexts is not None else [None] * len(trainers)
    try:
        group = BatchedGroup(trainers, contexts)
    except ValueError as err:
        log.warning(
            "launcher=batched: %d job(s) run one after another, not as one batch: %s",
            len(trainers),
            " ".join(str(err).split()),
        )
        out: list[Any] = []
        for t, ctx in zip(trainers, contexts, strict=True):
            with ctx() if ctx is not None else contextlib.nullcontext():
                try:
                    out.append(t.train())
                except OSError as e:
                    out.append(e)
        return out
    log.info(
        "launcher=batched: %d job(s), %d members in one batch (%s forward)",
        len(trainers),
        len(group.pairs),
        "vmap" if group.vmap else "per-member",
    )
    try:
        results = group.train()
    except (OSError, ValueError) as e:  # a write failed; a checkpoint this batch cannot resume
        return [e] * len(trainers)
    for t in trainers:
        t.exit_code = t.exit_code or group.exit_code
    return results
