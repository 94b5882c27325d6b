"""Seed ensembles and batched sweeps: K members in one job vs K separate runs, same total steps.

    python bench/bench_ensemble.py [--seeds 8] [--rounds 3] [--steps 200]
        [--configs small,default] [--variants separate,vmap,loop,plain,batched,sweep]
        [--device cpu|cuda]

Throughput is member-steps per second (K x steps / wall time). Variants:

- ``separate``: K Trainers run one after the other in this process (the cheapest way to run them
  on a 2-core machine: no process start-up counted);
- ``vmap`` / ``loop``: the Trainer's seed ensemble (``trainer.ensemble``);
- ``plain``: K separate runs of a minimal loop (the library optimizer built from the config,
  evaluation every ``trainer.eval_every`` steps, one metrics line per evaluation), no Trainer;
- ``batched``: the same minimal loop for all K members at once: parameters stacked ``[K, ...]``,
  forward/backward through ``functional_call`` + ``vmap``, one ``groktimizer.batched``
  ``BatchedOptimizer`` step for all members (per-member phase and switch), evaluation vmapped;
- ``batched_loop``: the same, but each member's forward/backward on its own model (plain matmuls;
  the gradients land in the stack), only the optimizer step batched;
- ``sweep`` / ``sweep_vmap``: the pipeline's batched sweep (``launcher=batched``): K one-seed jobs,
  each its own Trainer, folder and files, trained as one ``BatchedGroup`` (forward per member /
  vmapped), i.e. what a sweep gets end to end (evaluation, metrics, results and checkpoints).

Target: batched >= 3x separate runs (8 members, small config).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_thread_arg,
    apply_threads,
    compose,
    interleaved,
    machine,
    median_ratio,
    table,
)

from groktimizer.batched import BatchedOptimizer, member_spec, stack_modules  # noqa: E402

CONFIGS = {
    # where the reference grokking loops live on CPU: tiny full-batch steps, overhead-bound
    "small": ["dataset.p=23", "model.width=128", "model.embed_dim=32"],
    "default": [],  # a+b mod 97, MLP 2x128 -> 512 -> 97: compute-bound on CPU
    # overhead-bound even on one CPU thread: where batching members pays most
    "tiny": ["dataset.p=23", "model.width=32", "model.embed_dim=8"],
}


def base(steps: int, extra: list[str], device: str = "cpu") -> list[str]:
    return [
        # the fixed default phase 2 (AdamW -> AdamCDM eta 2e-4, lambda 5): lr 'auto' is measured
        # per run and not batched
        "optimizer=adam_cdm",
        "schedule=biphasic",
        "grad_filter=none",
        f"trainer.max_steps={steps}",
        "trainer.stop_at_target=false",
        "trainer.plots=false",
        "trainer.progress=false",
        f"trainer.device={device}",
        f"trainer.checkpoint_every={10 * steps}",
        *extra,
    ]


def separate(ov: list[str], seeds: list[int], steps: int) -> float:
    from groktimizer.experiment.trainer import Trainer

    total = 0.0
    for s in seeds:
        with tempfile.TemporaryDirectory() as d:
            t = Trainer(compose(*ov, f"seed={s}"), d)
            t0 = time.perf_counter()
            t.train()
            total += time.perf_counter() - t0
    return total / (len(seeds) * steps)


def ensemble(ov: list[str], seeds: list[int], steps: int, mode: str) -> float:
    from groktimizer.experiment.trainer import Trainer

    with tempfile.TemporaryDirectory() as d:
        seeds_arg = "[" + ",".join(map(str, seeds)) + "]"
        t = Trainer(compose(*ov, f"trainer.seeds={seeds_arg}", f"trainer.ensemble={mode}"), d)
        t0 = time.perf_counter()
        t.train()
        return (time.perf_counter() - t0) / (len(seeds) * steps)


def sweep(ov: list[str], seeds: list[int], steps: int, mode: str = "loop") -> float:
    """The pipeline's batched sweep (``launcher=batched``): K one-seed jobs, each its own Trainer
    and folder, trained as one ``BatchedGroup`` (forward per member, or vmapped)."""
    from groktimizer.experiment.batched_sweep import BatchedGroup
    from groktimizer.experiment.trainer import Trainer

    with tempfile.TemporaryDirectory() as d:
        trainers = [
            Trainer(compose(*ov, f"seed={s}", f"trainer.ensemble={mode}"), Path(d) / f"job{s}")
            for s in seeds
        ]
        group = BatchedGroup(trainers)
        t0 = time.perf_counter()
        group.train()
        return (time.perf_counter() - t0) / (len(seeds) * steps)


# ---------------------------------------------------------------- sweeps as batches
def _node(node: Any) -> Any:
    """``instantiate(node)``, None for ``_target_: null`` (as the pipeline's builders do)."""
    from hydra.utils import instantiate

    return instantiate(node) if node is not None and node.get("_target_") else None


def factories(cfg: Any) -> tuple[Any, Any, Any]:
    """(optimizer partial, schedule partial or None, grad filter or None) of a config."""
    return _node(cfg.optimizer), _node(cfg.schedule), _node(cfg.grad_filter)


def _device(cfg: Any) -> torch.device:
    name = str(cfg.trainer.device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(cfg: Any, seed: int) -> tuple[Any, torch.nn.Module]:
    """One member's data and model, as the Trainer builds them (seeded, on trainer.device)."""
    from hydra.utils import instantiate

    device = _device(cfg)
    data = instantiate(cfg.dataset)(seed=seed).to(device, torch.float32)
    torch.manual_seed(seed)
    return data, instantiate(cfg.model)(data).to(device)


def _log(f: Any, row: dict[str, Any]) -> None:
    f.write(json.dumps(row) + "\n")


def plain(ov: list[str], seeds: list[int], steps: int) -> float:
    """K separate minimal runs (no Trainer), evaluation every eval_every steps."""
    cfg = compose(*ov)
    every = int(cfg.trainer.eval_every)
    total = 0.0
    for seed in seeds:
        data, model = _build(cfg, seed)
        make, schedule, grad_filter = factories(cfg)
        params = list(model.parameters())
        opt = make(params) if schedule is None else schedule(params, phase2=make)
        with tempfile.TemporaryDirectory() as d, open(Path(d) / "metrics.jsonl", "w") as f:
            _sync(_device(cfg))
            t0 = time.perf_counter()
            for step in range(1, steps + 1):
                opt.zero_grad()
                F.cross_entropy(model(data.x_train), data.y_train).backward()
                if grad_filter is not None:
                    grad_filter.apply(params)
                opt.step()
                if step % every == 0 or step == steps:
                    with torch.no_grad():
                        row = {"step": step}
                        for split, x, y in (
                            ("train", data.x_train, data.y_train),
                            ("val", data.x_val, data.y_val),
                        ):
                            out = model(x)
                            row[f"{split}_loss"] = F.cross_entropy(out, y)
                            row[f"{split}_acc"] = (out.argmax(-1) == y).float().mean()
                        row["weight_norm"] = torch.sqrt(
                            sum((p**2).sum() for p in model.parameters())
                        )
                        keys = list(row)[1:]
                        row.update(
                            zip(keys, torch.stack([row[k] for k in keys]).tolist(), strict=True)
                        )
                    if hasattr(opt, "observe"):
                        opt.observe(step=step, train_acc=row["train_acc"])
                    row["phase"] = getattr(opt, "phase", None)  # as wrapper.phase_of
                    _log(f, row)
            _sync(_device(cfg))
            total += time.perf_counter() - t0
    return total / (len(seeds) * steps)


def batched(ov: list[str], seeds: list[int], steps: int, forward: str = "vmap") -> float:
    """All K members as one batch: stacked parameters, one BatchedOptimizer step. ``forward``:
    ``vmap`` (one vmapped forward/backward) or ``loop`` (each member's own model, its gradients
    landing in the stack through the views ``stack_modules`` sets up)."""
    from torch.func import functional_call, vmap

    cfg = compose(*ov)
    every = int(cfg.trainer.eval_every)
    built = [_build(cfg, s) for s in seeds]
    models = [m for _, m in built]
    stacked = stack_modules(models)
    specs = [member_spec(*factories(cfg)) for _ in seeds]
    opt = BatchedOptimizer(list(stacked.values()), specs)
    xs = torch.stack([d.x_train for d, _ in built])
    ys = torch.stack([d.y_train for d, _ in built])
    xv = torch.stack([d.x_val for d, _ in built])
    yv = torch.stack([d.y_val for d, _ in built])
    base = models[0]

    def member_loss(params, x, y):
        return F.cross_entropy(functional_call(base, params, (x,)), y)

    def member_eval(params, x, y):
        out = functional_call(base, params, (x,))
        return F.cross_entropy(out, y), (out.argmax(-1) == y).float().mean()

    loss = vmap(member_loss)
    evaluate = vmap(member_eval)
    k = len(seeds)
    with tempfile.TemporaryDirectory() as d:
        files = [open(Path(d) / f"metrics_{s}.jsonl", "w") for s in seeds]  # noqa: SIM115
        _sync(xs.device)
        t0 = time.perf_counter()
        for step in range(1, steps + 1):
            opt.zero_grad()
            if forward == "vmap":
                loss(stacked, xs, ys).sum().backward()
            else:
                for (d, _), m in zip(built, models, strict=True):
                    F.cross_entropy(m(d.x_train), d.y_train).backward()
            opt.step()
            if step % every == 0 or step == steps:
                with torch.no_grad():
                    tl, ta = evaluate(stacked, xs, ys)
                    vl, va = evaluate(stacked, xv, yv)
                    wn = sum(p.reshape(k, -1).pow(2).sum(1) for p in stacked.values()).sqrt()
                    cols = torch.stack([tl, ta, vl, va, wn]).tolist()
                names = ("train_loss", "train_acc", "val_loss", "val_acc", "weight_norm")
                metrics = dict(zip(names, cols, strict=True))
                opt.observe(step, {"train_acc": metrics["train_acc"]})
                for i, f in enumerate(files):
                    row = {"step": step, **{n: metrics[n][i] for n in names}}
                    _log(f, {**row, **opt.member_row(i)})
        _sync(xs.device)
        dt = time.perf_counter() - t0
        for f in files:
            f.close()
    return dt / (k * steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--configs", default="small,default")
    ap.add_argument(
        "--variants",
        default="separate,vmap,loop,plain,batched",
        help="comma list of separate, vmap, loop, plain, batched, batched_loop, sweep, sweep_vmap "
        "(the first is the reference of the ratios)",
    )
    ap.add_argument("--device", default="cpu", help="trainer.device (cpu, cuda)")
    add_thread_arg(ap)
    args = ap.parse_args()
    apply_threads(args)
    torch.set_flush_denormal(True)  # as the Trainer does (trainer.flush_denormal)
    seeds = list(range(args.seeds))
    runners = {
        "separate": lambda ov: separate(ov, seeds, args.steps),
        "vmap": lambda ov: ensemble(ov, seeds, args.steps, "vmap"),
        "loop": lambda ov: ensemble(ov, seeds, args.steps, "loop"),
        "plain": lambda ov: plain(ov, seeds, args.steps),
        "batched": lambda ov: batched(ov, seeds, args.steps),
        "batched_loop": lambda ov: batched(ov, seeds, args.steps, forward="loop"),
        "sweep": lambda ov: sweep(ov, seeds, args.steps),
        "sweep_vmap": lambda ov: sweep(ov, seeds, args.steps, "vmap"),
    }
    variants = args.variants.split(",")
    ref = variants[0]
    rows = []
    for name in args.configs.split(","):
        ov = base(args.steps, CONFIGS[name], args.device)
        t = interleaved(
            {v: (lambda ov=ov, v=v: runners[v](ov)) for v in variants}, args.rounds, warmup=0
        )
        med = {k: sorted(v)[len(v) // 2] for k, v in t.items()}
        row = [name, " ".join(CONFIGS[name]) or "(defaults)"]
        row += [1 / med[v] for v in variants]
        row += [median_ratio(t[ref], t[v]) for v in variants[1:]]
        both = "plain" in variants and "batched" in variants and ref != "plain"
        if both:
            row.append(median_ratio(t["plain"], t["batched"]))
        rows.append(row)
    print(machine())
    print(
        f"{args.seeds} members, {args.steps} steps each, {args.rounds} interleaved rounds; "
        "member-steps/s (medians; ratios are medians of per-round ratios)"
    )
    headers = ["config", "overrides", *variants, *(f"{v} / {ref}" for v in variants[1:])]
    if both:
        headers.append("batched / plain")
    print(table(headers, rows))


if __name__ == "__main__":
    main()
