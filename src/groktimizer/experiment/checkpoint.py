"""Checkpoints: what a run saves, and the checks before a resume trusts one.

A checkpoint holds every member's model, optimizer, filter, milestones and RNG state plus the
run-defining config (the config minus :data:`runio.RUN_INVARIANT_KEYS` and the budget), so a
resume into a folder written by another config or other seeds is refused with one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from groktimizer.experiment import runio

# besides the run-invariant keys, a resume may extend the budget or ask for the final sharpness
RESUME_MAY_CHANGE = ("trainer.max_steps", "trainer.sharpness", "trainer.sharpness_iters")


def run_defining_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config flattened to dotted keys, without the keys a resume may change."""
    flat: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if runio.is_run_invariant(key) or key in RESUME_MAY_CHANGE:
            continue
        if isinstance(v, dict):
            flat.update(run_defining_config(v, key + "."))
        else:
            flat[key] = list(v) if isinstance(v, tuple) else v
    return flat


def state(step: int, seeds: list[int], config: dict[str, Any], members: list[Any]) -> dict:
    return {
        "step": step,
        "seeds": seeds,
        "config": run_defining_config(config),
        "members": [
            {
                "seed": m.seed,
                "model": m.model.state_dict(),
                "optimizer": m.optimizer.state_dict(),
                "grad_filter": m.grad_filter.state_dict() if m.grad_filter else None,
                "tracker": m.tracker.state_dict(),
                "generator": m.generator.get_state(),
                "wall_time": m.wall_time,
                # the metrics rows so far: a damaged or truncated metrics.jsonl is rebuilt
                "log": m.log.read(),
            }
            for m in members
        ],
    }


def find(
    path: Path,
    mode: str,
    seeds: list[int],
    config: dict[str, Any],
    max_steps: int,
    batched: bool = False,
) -> dict | None:
    """The checkpoint a run resumes from (None: a fresh start), checked before any work.

    Refuses (one-line error) a missing checkpoint with resume=true, an unreadable one, and one
    written by a run with other seeds or another config: resuming it would report that run's
    results under this run's config (e.g. a sweep re-run into the same folder). ``batched``: the
    run is a member of a batched sweep (launcher=batched), whose checkpoints hold the member's
    slice of the batch's state; a plain run refuses those.
    """
    if mode == "true" and not path.exists():
        raise FileNotFoundError(
            f"trainer.resume=true but there is no checkpoint at {path}; "
            "pass hydra.run.dir=<the run's directory>"
        )
    if mode == "false" or not path.exists():
        return None
    st = runio.load_checkpoint(path)
    if int(st["step"]) > max_steps:
        raise ValueError(
            f"trainer.max_steps={max_steps} is below the step of checkpoint {path} "
            f"({st['step']}): give a budget >= {st['step']} to continue it, or "
            "trainer.resume=false to start over"
        )
    written_batched = any(
        isinstance(m.get("optimizer"), dict) and m["optimizer"].get("batched_member")
        for m in st.get("members", [])
    )
    if written_batched and not batched:
        raise ValueError(
            f"checkpoint {path} was written by a batched sweep (launcher=batched): resume it "
            "with launcher=batched, or trainer.resume=false to start over"
        )
    if list(st["seeds"]) != seeds:
        raise ValueError(
            f"checkpoint {path} holds seeds {st['seeds']}, this run has {seeds}; "
            "use another hydra.run.dir or trainer.resume=false"
        )
    if "config" in st:
        ours = run_defining_config(config)
        diff = sorted(
            k for k in set(ours) | set(st["config"]) if ours.get(k) != st["config"].get(k)
        )
        if diff:
            k = diff[0]
            raise ValueError(
                f"checkpoint {path} was written with {k}={st['config'].get(k)!r}, "
                f"this run has {k}={ours.get(k)!r} ({len(diff)} keys differ); "
                "use another hydra.run.dir, or trainer.resume=false to start over"
            )
    return st


def restore(members: list[Any], st: dict[str, Any], max_steps: int) -> int:
    """Load every member's state; returns the step the checkpoint was taken at.

    A member that had used its whole budget ("completed") trains on when `max_steps` is larger;
    one that reached its target or diverged stays finished.
    """
    step = int(st["step"])
    for m, s in zip(members, st["members"], strict=True):
        m.model.load_state_dict(s["model"])
        m.optimizer.load_state_dict(s["optimizer"])
        if m.grad_filter is not None and s["grad_filter"] is not None:
            m.grad_filter.load_state_dict(s["grad_filter"])
        m.tracker.load_state_dict(s["tracker"])
        m.generator.set_state(s["generator"])
        m.wall_time = float(s["wall_time"])
        m.log.restore(step, s.get("log"))
        if m.tracker.status == "completed" and step < max_steps:
            m.tracker.status, m.tracker.message = "running", ""
    return step
