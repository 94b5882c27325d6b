"""Network-level tests of the paper's claims (issue 16): phase 2 from a shared switch state.

Phase 1 is run once per seed exactly as the pipeline's default GROKtimizer runs it (a+b mod 97,
40% train, default MLP, full batch, AdamW lr 1e-3 wd 0 betas (0.9, 0.98); switch when train
accuracy >= 99.9% for 3 evaluations 10 steps apart) and cached. Every phase-2 configuration then
starts from that same state (weights and Adam's second moment), so configurations of one seed
differ only in the phase-2 optimizer: the law's λ points share t_switch by construction.

    python scripts/claims_net.py --plan law_cdm            # one plan, configs run one by one
    python scripts/claims_net.py --plan law_cdm --dry-run  # list what it would run
    python scripts/claims_net.py --plan cdm_grid --runs outputs/results/claims/cdm_grid_runs.jsonl
                          # plain CDM, η × λ × ζ × 3 seeds, each run stopped at 99% val

Each phase-2 run appends one JSON line to outputs/results/claims/runs.jsonl (config, status,
phase-2 steps to 99% val, norm milestones, the curve every `eval_every` steps); a config already
there is skipped (resumable). Stop rule: val acc >= 99% reached and the weight norm within 1% of
its current value over the last half of the run (a plateau), or train accuracy < 30% after the
switch (collapse), a non-finite loss (diverged), or the budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from groktimizer import CDM, AdamCDM  # noqa: E402
from groktimizer.adam_cdm_l2 import AdamCDML2, metric_scale  # noqa: E402
from groktimizer.experiment.data import modular_arithmetic  # noqa: E402
from groktimizer.experiment.models import MLP  # noqa: E402

OUT = ROOT / "outputs/results/claims"
CACHE = ROOT / "outputs/claims_cache"
RUNS = OUT / "runs.jsonl"
EVAL_EVERY = 10
PATIENCE = 3
PLATEAU_DRIFT = 0.01
COLLAPSE_ACC = 0.3

# η for raw CDM: below GD's bound 2/h_max (h_max ≈ 5.2 at the switch: 0.38) and heavy ball's
# ≈ 4/h_max (0.77), with room for the curvature to rise after the switch.
ETA_CDM = 0.2
ETA_ADAM = 2e-4
LAM_CDM = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
LAM_ADAM = (0.15, 0.5, 1.5, 5.0, 15.0)
CDM_GRID_ETA = (0.1, 0.2, 0.4, 0.7)
CDM_GRID_LAM = (3e-4, 1e-3, 3e-3)
CDM_GRID_ZETA = (0.5, 1.0, 2.0)


def _cfg(kind, lr, wd, seed, damping=1.0, momentum=None, max_steps=3000, **extra):
    return dict(
        kind=kind,
        lr=lr,
        weight_decay=wd,
        damping=damping,
        momentum=momentum,
        seed=seed,
        max_steps=max_steps,
        **extra,
    )


def plans() -> dict[str, list[dict]]:
    """Named plans; ``all`` runs them in priority order (seed 0 first, then the rest)."""
    p: dict[str, list[dict]] = {}

    def law(s: int) -> list[dict]:
        # 1. the law: critical momentum vs β = 0 (same η, coupled decay), raw CDM and AdamCDM
        return [_cfg("cdm", ETA_CDM, lam, s, max_steps=4000) for lam in LAM_CDM] + [
            _cfg("adam_cdm", ETA_ADAM, lam, s, max_steps=4000) for lam in LAM_ADAM
        ]

    # β = 0 only where GD's horizon ln(1/ε)/(ηλ) can fit the budget (raw ηλ >= 2e-3,
    # Adam's metric ηλ >= 1e-3); smaller ηλ is stated as censored, not run
    def gd_raw(s: int) -> list[dict]:
        return [
            _cfg("cdm", ETA_CDM, lam, s, momentum=0.0, max_steps=2500) for lam in (1e-1, 3e-2, 1e-2)
        ]

    def gd_adam(s: int) -> list[dict]:
        return [
            _cfg("adam_cdm", ETA_ADAM, lam, s, momentum=0.0, max_steps=2500) for lam in (15.0, 5.0)
        ]

    # 2. critical damping: ζ sweep, AdamCDM at the default (η 2e-4, λ 5), 3 seeds
    def zeta(s: int) -> list[dict]:
        # seed 0 runs to the norm plateau (curves); seeds 1 and 2 only need t_gen99
        return [
            _cfg("adam_cdm", ETA_ADAM, 5.0, s, damping=z, max_steps=4000 if s == 0 else 1500)
            for z in (0.25, 0.5, 1.0, 2.0)
        ]

    # 3. implicit bias: the ℓ2-targeting variant at AdamCDM's flat-mode rate (λ_ℓ2 = 5·s)
    def l2(s: int) -> list[dict]:
        return [_cfg("adam_cdm_l2", ETA_ADAM, 5.0, s, max_steps=4000)]

    # raw CDM collapses for λ >= 1e-2 at η 0.2 (decay beats the fit): extend the law downwards
    def law_low(s: int) -> list[dict]:
        return [_cfg("cdm", ETA_CDM, lam, s, max_steps=4000) for lam in (3e-4, 1e-4)]

    # 2. plain CDM given a fair chance: η up to heavy ball's bound ≈ 4/h_max ≈ 0.77 (h_max ≈ 5.2
    # at the switch), λ over a decade, ζ around critical; stops at 99% val (t_gen99 only)
    p["cdm_grid"] = [
        _cfg("cdm", eta, lam, s, damping=z, max_steps=2500, stop="gen99")
        for s in (0, 1, 2)
        for eta in CDM_GRID_ETA
        for lam in CDM_GRID_LAM
        for z in CDM_GRID_ZETA
    ]
    p["law_low"] = law_low(0) + law_low(1)
    p["gd_raw_low"] = [
        _cfg("cdm", ETA_CDM, lam, s, momentum=0.0, max_steps=4000)
        for s in (0, 1)
        for lam in (3e-3, 1e-3)
    ]
    p["law"] = law(0) + law(1)
    p["law_gd"] = gd_raw(0) + gd_adam(0) + gd_raw(1) + gd_adam(1)
    p["zeta"] = zeta(0) + zeta(1) + zeta(2)
    p["l2"] = l2(0) + l2(1)
    # priority order under a ~40 CPU-minute budget: seed 0 of each claim first (the costly
    # smallest Adam λ and the β = 0 runs after the cheap ones), then seeds 1 and 2
    a0 = [c for c in law(0) if c["weight_decay"] != LAM_ADAM[0]]
    p["all"] = a0 + l2(0) + zeta(0) + gd_adam(0)[1:] + gd_raw(0) + gd_adam(0)[:1]
    p["all"] += [law(0)[-len(LAM_ADAM)]] + law(1) + l2(1) + zeta(1) + zeta(2)
    p["all"] += gd_raw(1) + gd_adam(1)
    return p


# --------------------------------------------------------------------------- model and data
def build(seed: int):
    data = modular_arithmetic(op="add", p=97, train_fraction=0.4, form="tokens", seed=seed)
    torch.manual_seed(seed)
    model = MLP(data, depth=1, width=512, embed_dim=128)
    return data, model


def logits(model: MLP, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` for the one-hidden-layer token MLP, computed through per-position tables.

    ``W1·[E[a]; E[b]; E[=]] = Σ_i (E·W1_iᵀ)[x_i]``: the first layer becomes V×512 tables and a
    gather instead of an N×384×512 matmul (about 4x less arithmetic per step at p = 97). Same
    function and gradients as ``model(x)`` up to float rounding (checked in tests/test_claims.py).
    """
    lin1, act, lin2 = model.net
    emb, w1 = model.embed.weight, lin1.weight
    dim = emb.shape[1]
    h = lin1.bias
    for i in range(x.shape[1]):
        h = h + (emb @ w1[:, i * dim : (i + 1) * dim].T)[x[:, i]]
    return lin2(act(h))


@torch.no_grad()
def val_acc(model, data) -> float:
    return float((logits(model, data.x_val).argmax(-1) == data.y_val).float().mean())


@torch.no_grad()
def wnorm(model) -> float:
    return float(torch.sqrt(sum((p.float() ** 2).sum() for p in model.parameters())))


def phase1(seed: int, max_steps: int = 3000) -> Path:
    """AdamW (wd 0) to the accuracy switch; caches weights, optimizer state and the curve."""
    path = CACHE / f"phase1_seed{seed}.pt"
    if path.exists():
        return path
    data, model = build(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, betas=(0.9, 0.98))
    held, rows, t0 = 0, [], time.time()
    for step in range(max_steps + 1):
        out = logits(model, data.x_train)
        loss = F.cross_entropy(out, data.y_train)
        if step % EVAL_EVERY == 0:  # the metrics of the weights after `step` updates
            acc = float((out.argmax(-1) == data.y_train).float().mean())
            rows.append([step, float(loss.detach()), acc, val_acc(model, data), wnorm(model)])
            held = held + 1 if acc >= 0.999 else 0
            if held >= PATIENCE:
                break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    else:
        raise RuntimeError(f"phase 1 did not interpolate in {max_steps} steps (seed {seed})")
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "t_switch": step,
            "model": model.state_dict(),
            "adam": opt.state_dict(),
            "curve": rows,
            "seconds": time.time() - t0,
        },
        path,
    )
    print(f"phase 1 seed {seed}: switch at {step} ({time.time() - t0:.0f} s)", flush=True)
    return path


# --------------------------------------------------------------------------- phase 2
def _d_switch(adam_state: dict, model) -> list[torch.Tensor]:
    """D = √v̂ + ε of Adam's state at the switch, per parameter (the D-weighted norm's D)."""
    st = adam_state["state"]
    out = []
    for i, _ in enumerate(model.parameters()):
        v, t = st[i]["exp_avg_sq"], int(st[i]["step"])
        out.append(v.div(1 - 0.98**t).sqrt().add_(1e-8))
    return out


@torch.no_grad()
def dnorm(model, ds: list[torch.Tensor]) -> float:
    return float(
        torch.sqrt(sum((d * p**2).sum() for d, p in zip(ds, model.parameters(), strict=True)))
    )


def make_optimizer(cfg: dict, model, adam_state: dict):
    params = list(model.parameters())
    mom = cfg["momentum"]
    if cfg["kind"] == "cdm":
        return CDM(
            params,
            lr=cfg["lr"],
            weight_decay=cfg["weight_decay"],
            damping=cfg["damping"],
            momentum=mom,
        ), {}
    adam = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.98))
    adam.load_state_dict(adam_state)
    if cfg["kind"] == "adam_cdm":
        opt = AdamCDM(
            params,
            lr=cfg["lr"],
            weight_decay=cfg["weight_decay"],
            damping=cfg["damping"],
            momentum=mom,
        )
        opt.init_from_adam(adam)
        return opt, {}
    if cfg["kind"] == "adam_cdm_l2":
        st = [adam.state[p] for p in params]
        s = metric_scale([x["exp_avg_sq"] for x in st], [int(x["step"]) for x in st])
        lam = cfg["weight_decay"] * s  # same κ = ηλ/s as AdamCDM at λ
        opt = AdamCDML2(
            params,
            lr=cfg["lr"],
            weight_decay=lam,
            damping=cfg["damping"],
            metric_scale=s,
            momentum=mom,
        )
        opt.init_from_adam(adam)
        return opt, {"metric_scale": s, "weight_decay_l2": lam}
    raise ValueError(f"unknown kind {cfg['kind']!r}")


def run_phase2(cfg: dict) -> dict:
    torch.set_flush_denormal(True)
    ck = torch.load(phase1(cfg["seed"]), weights_only=False)
    data, model = build(cfg["seed"])
    model.load_state_dict(ck["model"])
    ds = _d_switch(ck["adam"], model)
    opt, extra = make_optimizer(cfg, model, ck["adam"])
    rows: list[list[float]] = []
    status, t_gen99, t0 = "budget", None, time.time()
    norms: dict[int, float] = {}
    for k in range(cfg["max_steps"] + 1):
        out = logits(model, data.x_train)
        loss = F.cross_entropy(out, data.y_train)
        if not math.isfinite(float(loss.detach())):
            status = "diverged"
            break
        if k % EVAL_EVERY == 0:
            acc = float((out.argmax(-1) == data.y_train).float().mean())
            va, n = val_acc(model, data), wnorm(model)
            rows.append([k, float(loss.detach()), acc, va, n, dnorm(model, ds)])
            norms[k] = n
            if t_gen99 is None and va >= 0.99:
                t_gen99 = k
                if cfg.get("stop") == "gen99":
                    status = "reached"
                    break
            if k > 0 and acc < COLLAPSE_ACC:
                status = "collapsed"
                break
            recent = [v for j, v in norms.items() if j >= k // 2]
            drift = max(abs(v - n) for v in recent) / n
            if t_gen99 is not None and k >= 100 and drift < PLATEAU_DRIFT:
                status = "plateau"
                break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    mom = opt.param_groups[0].get("momentum_used", cfg["momentum"])
    return {
        "config": cfg,
        "t_switch": ck["t_switch"],
        "status": status,
        "t_gen99_phase2": t_gen99,
        "steps_run": rows[-1][0] if rows else 0,
        "momentum": mom,
        "seconds": round(time.time() - t0, 1),
        **extra,
        "curve_cols": ["k", "train_loss", "train_acc", "val_acc", "weight_norm", "dnorm_switch"],
        "curve": rows,
    }


def key(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


def done_keys(path: Path = RUNS) -> set[str]:
    if not path.exists():
        return set()
    return {key(json.loads(line)["config"]) for line in path.read_text().splitlines() if line}


def append_record(path: Path, rec: dict) -> None:
    """One run, one JSON line (the files are append-only: a resumed plan skips what is there)."""
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")


def code_version() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def hardware() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores shared (cpurun slot), "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plan", action="append", default=[], choices=sorted(plans()))
    ap.add_argument(
        "--plan-file",
        help="JSON list of configs, re-read before every run (so a running queue can be edited)",
    )
    ap.add_argument("--runs", type=Path, default=RUNS, help="JSON-lines file the runs append to")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    OUT.mkdir(parents=True, exist_ok=True)
    commit = code_version()

    def pending() -> list[tuple[str, dict]]:
        todo = [(name, cfg) for name in args.plan for cfg in plans()[name]]
        if args.plan_file:
            todo += [("queue", cfg) for cfg in json.loads(Path(args.plan_file).read_text())]
        done = done_keys(args.runs)
        return [(n, c) for n, c in todo if key(c) not in done]

    if args.dry_run:
        for name, cfg in pending():
            print(name, cfg)
        return
    while todo := pending():
        name, cfg = todo[0]
        res = run_phase2(cfg)
        res.update(
            plan=name,
            hardware=hardware(),
            commit=commit,
            command="python scripts/claims_net.py "
            + (f"--plan {name}" if name != "queue" else f"--plan-file {args.plan_file}")
            + ("" if args.runs == RUNS else f" --runs {args.runs}"),
            date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        append_record(args.runs, res)
        print(
            f"{name} {res['status']:9s} t_gen99={res['t_gen99_phase2']} "
            f"steps={res['steps_run']} {res['seconds']} s {cfg}",
            flush=True,
        )


if __name__ == "__main__":
    main()
