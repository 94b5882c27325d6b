"""The claims analysis (slope fit, milestones), the ℓ2-targeting AdamCDML2 and the robustness
driver's resume rule."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from groktimizer import AdamCDM
from groktimizer.adam_cdm_l2 import AdamCDML2, metric_scale

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


ca = _script("claims_analysis")


def test_bootstrap_slope_recovers_half_and_separates_it_from_one():
    rng = np.random.default_rng(1)
    x = np.repeat([1e-4, 1e-3, 1e-2, 1e-1], 3)
    y = 7.0 * x**-0.5 * np.exp(rng.normal(0, 0.1, x.size))
    slope, (lo, hi) = ca.bootstrap_slope(x, y, n_boot=500)
    assert abs(slope + 0.5) < 0.05
    assert lo <= -0.5 <= hi
    assert hi - lo < 0.2 and lo > -1.0


def test_bootstrap_interval_is_zero_width_on_an_exact_power_law():
    x = np.array([1e-3, 1e-2, 1e-1, 1.0])
    slope, (lo, hi) = ca.bootstrap_slope(x, 3 * x**-1.0, n_boot=50)
    assert slope == pytest.approx(-1.0) and lo == pytest.approx(-1.0) and hi == pytest.approx(-1.0)


def test_settle_time_of_an_exponential_decay():
    c = 0.01
    k = np.arange(0, 2000, 10)
    n = 10 + 5 * np.exp(-c * k)
    t = ca.settle_time(k, n, 10.0, 0.05 * 5)
    assert abs(t - math.log(20) / c) <= 10
    assert ca.settle_time(k, n, 10.0, 1e-9) is None  # never settles inside the record


def _run(status, k, norms, t_gen=None):
    return {
        "status": status,
        "t_gen99_phase2": t_gen,
        "curve_cols": ["k", "train_loss", "train_acc", "val_acc", "weight_norm", "dnorm_switch"],
        "curve": [[kk, 0, 1, 1, nn, 1.0] for kk, nn in zip(k, norms, strict=True)],
    }


def test_milestones_censor_runs_without_a_plateau():
    k = list(range(0, 2000, 10))
    norms = [100 * math.exp(-0.01 * kk) + 50 for kk in k]
    m = ca.milestones(_run("budget", k, norms, t_gen=100))
    assert m["t_norm5"] is None and m["t_drop95"] is None and m["t_gen99"] == 100
    m = ca.milestones(_run("plateau", k, norms, t_gen=100))
    # cut where the norm stays within 1% over the last half (k ≈ 1,060); 5% of the plateau (~2.5)
    # is a tighter band than 5% of the drop (~5)
    assert m["status"] == "plateau" and 50 < m["norm_end"] < 50.5
    assert abs(m["t_drop95"] - 300) <= 10 and abs(m["t_norm5"] - 370) <= 20
    assert m["drop_at_gen"] == pytest.approx(1 - math.exp(-1), abs=0.01)
    # a run flagged as a plateau whose record is not flat by the rule has no norm milestones
    m = ca.milestones(_run("plateau", k[:50], norms[:50], t_gen=100))
    assert m["status"] == "no plateau" and m["t_drop95"] is None


def _quadratic(seed=0, d=12):
    g = torch.Generator().manual_seed(seed)
    h = torch.cat(
        [
            torch.rand(d // 2, generator=g, dtype=torch.float64) + 0.5,
            torch.zeros(d - d // 2, dtype=torch.float64),
        ]
    )  # half the directions flat
    a = torch.randn(d, generator=g, dtype=torch.float64)
    w0 = torch.randn(d, generator=g, dtype=torch.float64)
    return h, a, w0


def _descend(opt_cls, h, a, w0, steps=4000, **kw):
    w = w0.clone().requires_grad_(True)
    opt = opt_cls([w], **kw)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (h * (w - a) ** 2).sum()).backward()
        opt.step()
    return w.detach(), opt


def test_adam_cdm_l2_reaches_the_l2_fixed_point_and_adam_cdm_does_not():
    h, a, w0 = _quadratic()
    lam = 0.05
    ridge = h * a / (h + lam)  # argmin ½(w−a)ᵀH(w−a) + (λ/2)‖w‖²
    w, opt = _descend(AdamCDML2, h, a, w0, lr=0.01, weight_decay=lam, metric_scale=0.1)
    assert torch.allclose(w, ridge, atol=1e-6)
    assert opt.param_groups[0]["momentum_used"] == pytest.approx(
        (1 - math.sqrt(0.01 * lam / 0.1)) ** 2
    )
    w_adam, _ = _descend(AdamCDM, h, a, w0, lr=0.01, weight_decay=lam)
    assert (w_adam - ridge).norm() > 1e-2 * ridge.norm()  # a D-weighted target instead


def test_adam_cdm_l2_measures_its_metric_scale_and_round_trips():
    h, a, w0 = _quadratic(1)
    w, opt = _descend(AdamCDML2, h, a, w0, steps=5, lr=0.01, weight_decay=0.1)
    s = opt.param_groups[0]["metric_scale"]
    assert s is not None and s > 0
    w2 = w.clone().requires_grad_(True)
    opt2 = AdamCDML2([w2], lr=0.01, weight_decay=0.1)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["metric_scale"] == s
    assert torch.equal(
        opt2.state[w2]["momentum_buffer"],
        opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"],
    )


def test_adam_cdm_l2_metric_decay_is_weight_decay_times_the_metric_scale():
    """metric_decay=True at λ equals metric_decay=False at λ·s step for step (s measured at the
    first step), and its β is AdamCDM's at (η, λ): s cancels."""
    h, a, w0 = _quadratic(2)
    w, opt = _descend(AdamCDML2, h, a, w0, steps=200, lr=0.01, weight_decay=5.0, metric_decay=True)
    s = opt.param_groups[0]["metric_scale"]
    w_ref, ref = _descend(AdamCDML2, h, a, w0, steps=200, lr=0.01, weight_decay=5.0 * s)
    assert torch.allclose(w, w_ref, rtol=1e-9, atol=1e-12)
    assert opt.param_groups[0]["momentum_used"] == pytest.approx((1 - math.sqrt(0.05)) ** 2)
    assert ref.param_groups[0]["momentum_used"] == pytest.approx((1 - math.sqrt(0.05)) ** 2)
    assert len(opt.preconditioner()) == 1 and opt.preconditioner()[0].shape == w.shape


def test_knob_free_groktimizer_runs_adam_cdm_l2_with_adam_cdm_s_eta_and_lambda():
    """The tuner sets AdamCDML2 (metric_decay) from the same rule as AdamCDM: same η and λ."""
    import functools

    from groktimizer import GROKtimizer, StepSwitch, observe

    h, a, w0 = _quadratic(3)
    records = {}
    for cls in (AdamCDM, functools.partial(AdamCDML2, metric_decay=True)):
        w = w0.clone().requires_grad_(True)
        opt = GROKtimizer([w], phase2=cls, switch=StepSwitch(5))

        def loss(w=w):
            return 0.5 * (h * (w - a) ** 2).sum()

        for step in range(1, 8):
            opt.zero_grad()
            loss().backward()
            opt.step()
            observe(opt, step, train_loss=float(loss().detach()), closure=loss)
        records[cls] = opt.auto_lr_record
    rec_cdm, rec_l2 = records.values()
    assert rec_l2["preconditioned"] is True
    assert rec_l2["lr"] == pytest.approx(rec_cdm["lr"], rel=1e-9)
    assert rec_l2["weight_decay"] == pytest.approx(rec_cdm["weight_decay"], rel=1e-9)


def _one_step(**kw):
    w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    opt = AdamCDML2([w], lr=0.01, weight_decay=0.5, metric_scale=0.2, momentum=0.0, **kw)
    w.grad = torch.tensor([0.3, 0.0], dtype=torch.float64)  # the second entry never sees one
    opt.step()
    return w.detach()


def test_adam_cdm_l2_scale_floor_keeps_a_gradient_free_entry_from_jumping_to_zero():
    """Under the default floor ηλ' an entry with no gradient has D = ηλ' + ε, so its flat-mode
    factor ηλ'/D is 1 (it jumps to 0 in one step: the digits blow-up); scale_floor f keeps
    D ≥ f·s, so it moves by ηλ'w/(f·s) and an entry above the floor is untouched by it."""
    eps, lr, lam = 1e-8, 0.01, 0.5
    w = _one_step()
    assert float(w[1]) == pytest.approx(2.0 - lr * lam * 2.0 / (lr * lam + eps), abs=1e-12)
    assert abs(float(w[1])) < 1e-5
    w = _one_step(scale_floor=0.5)  # floor 0.5 · 0.2 = 0.1 < |g| = 0.3
    assert float(w[1]) == pytest.approx(2.0 - lr * lam * 2.0 / (0.1 + eps), rel=1e-12)
    assert float(w[0]) == pytest.approx(1.0 - lr * (0.3 + lam * 1.0) / (0.3 + eps), rel=1e-12)


def test_adam_cdm_l2_scale_rules_track_the_median_of_the_metric_or_its_maximum():
    """ "track" re-measures s at every step (the median of √v̂ + ε, so λ' = λ·s follows the
    gradient's scale), "max" keeps the largest value seen, "first" the first step's."""
    h, a, w0 = _quadratic(4)
    h = h + 0.5  # no flat direction: the median of √v̂ is a gradient's scale, not ε
    kw = dict(lr=0.01, weight_decay=5.0, metric_decay=True)
    seen = []
    for steps in range(1, 31):
        _, opt = _descend(AdamCDML2, h, a, w0, steps=steps, scale_rule="track", **kw)
        p = opt.param_groups[0]["params"][0]
        st = opt.state[p]
        s_t = opt.param_groups[0]["metric_scale"]
        assert s_t == pytest.approx(
            metric_scale([st["exp_avg_sq"]], [st["step"]], 0.98, 1e-8), rel=1e-12
        )
        seen.append(s_t)
    assert max(seen) > 1.02 * min(seen)  # it moved
    _, first = _descend(AdamCDML2, h, a, w0, steps=30, scale_rule="first", **kw)
    assert first.param_groups[0]["metric_scale"] == seen[0]
    w = w0.clone().requires_grad_(True)
    opt = AdamCDML2([w], scale_rule="max", **kw)
    prev, fell = 0.0, False
    for _ in range(30):
        opt.zero_grad()
        (0.5 * (h * (w - a) ** 2).sum()).backward()
        opt.step()
        st = opt.state[w]
        now = metric_scale([st["exp_avg_sq"]], [st["step"]], 0.98, 1e-8)
        fell = fell or now < prev
        prev = max(prev, now)
        assert opt.param_groups[0]["metric_scale"] == pytest.approx(prev, rel=1e-12)
    assert fell  # the median fell at some step and "max" kept the larger value


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(lr=1.0, weight_decay=1.0, metric_decay=1), "metric_decay"),
        (dict(lr=0.0, weight_decay=1.0), "lr"),
        (dict(lr=1.0, weight_decay=0.0), "weight_decay"),
        (dict(lr=1.0, weight_decay=1.0, damping=-1), "damping"),
        (dict(lr=1.0, weight_decay=1.0, beta2=1.0), "beta2"),
        (dict(lr=1.0, weight_decay=1.0, metric_scale=0.0), "metric_scale"),
        (dict(lr=1.0, weight_decay=1.0, momentum=1.0), "momentum"),
        (dict(lr=1.0, weight_decay=1.0, scale_floor=0.0), "scale_floor"),
        (dict(lr=1.0, weight_decay=1.0, scale_rule="median"), "scale_rule"),
    ],
)
def test_adam_cdm_l2_rejects_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        AdamCDML2([torch.zeros(2, requires_grad=True)], **kw)


def test_table_logits_equal_the_mlp_and_its_gradients():
    from groktimizer.experiment.data import modular_arithmetic
    from groktimizer.experiment.models import MLP

    cn = _script("claims_net")
    data = modular_arithmetic(p=11, train_fraction=0.5, seed=0)
    torch.manual_seed(0)
    model = MLP(data, depth=1, width=32, embed_dim=8).double()
    grads = []
    for f in (model, lambda x: cn.logits(model, x)):
        model.zero_grad()
        out = f(data.x_train)
        torch.nn.functional.cross_entropy(out, data.y_train).backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (o1, g1), (o2, g2) = grads
    assert torch.allclose(o1, o2, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g1, g2, strict=True))


def test_flat_mode_model_critical_damping_settles_first_under_damping_passes_first():
    times = {z: ca.flat_mode_times(z, 1e-3, 0.9) for z in (0.25, 0.5, 1.0, 2.0)}
    settle = {z: t[1] for z, t in times.items()}
    first = {z: t[0] for z, t in times.items()}
    assert min(settle, key=settle.get) == 1.0
    assert first[0.25] < first[0.5] < first[1.0] < first[2.0]
    # critical: the flat mode decays like (1 + k√κ)(1 − √κ)^k, settling in ~ln(1/ε)/√κ steps
    assert 3 / math.sqrt(1e-3) < settle[1.0] < 5 / math.sqrt(1e-3)


def _write_run(job_dir, seed, **res):
    d = job_dir / f"seed_{seed}"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"status": "completed", **res}))


def test_robustness_driver_reruns_a_baseline_cut_below_the_new_cap(tmp_path, monkeypatch):
    """A baseline that ended (unreached) at a smaller cap than the one now needed is moved out
    of the table's tree and run again; reached runs, or runs at the cap, count as done."""
    rob = _script("robustness")
    out = tmp_path / "cpu"
    (out / "logs").mkdir(parents=True)
    job = out / "add97_tf1" / "adamw"
    for seed in range(3):
        _write_run(job, seed, steps=810, t_gen99=None)
    assert rob.finished(job, 3, 810) and not rob.finished(job, 3, 870)
    calls = []
    monkeypatch.setattr(rob.subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 0)
    rob.run_job(out, "add97_tf1", "adamw", 870, 3, lambda msg: None)
    assert not job.exists() and len(calls) == 1 and "trainer.max_steps=870" in calls[0]
    moved = list((tmp_path / "cpu_superseded" / "add97_tf1").glob("adamw.*/seed_*/results.json"))
    assert len(moved) == 3
    reached = out / "add97_mlp" / "adam_ema"
    for seed in range(3):
        _write_run(reached, seed, steps=1070, t_gen99=1070)
    rob.run_job(out, "add97_mlp", "adam_ema", 5000, 3, lambda msg: None)
    assert len(calls) == 1  # reached: nothing to run


def test_adam_cdm_l2_zero_decay_group_takes_the_default_lambda_for_its_momentum():
    """A group with λ = 0 (biases) gets β from the optimizer's λ, known at construction: from its
    own λ it would be 1 (an undamped heavy ball that sums gradients forever)."""
    w, b = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = AdamCDML2(
        [{"params": [w]}, {"params": [b], "weight_decay": 0.0}],
        lr=1e-3,
        weight_decay=2.0,
        metric_decay=True,
    )
    beta = (1 - math.sqrt(2e-3)) ** 2
    assert [g["momentum_used"] for g in opt.param_groups] == pytest.approx([beta, beta])
    w.grad, b.grad = torch.ones(3), torch.ones(2)
    opt.step()
    assert [g["momentum_used"] for g in opt.param_groups] == pytest.approx([beta, beta])


def _grid_record(lr, wd, z, seed, status, t_gen99, momentum=0.98):
    cfg = dict(
        kind="cdm",
        lr=lr,
        weight_decay=wd,
        damping=z,
        momentum=None,
        seed=seed,
        max_steps=2500,
        stop="gen99",
    )
    return dict(
        config=cfg,
        status=status,
        t_gen99_phase2=t_gen99,
        momentum=momentum,
        hardware="cpu",
        date=f"2026-11-29T00:00:0{seed}Z",
        commit="abc",
        plan="cdm_grid",
        seconds=1.0,
    )


def test_cdm_grid_table_counts_failures_and_gives_a_median_only_where_every_seed_reached(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(ca, "OUT", tmp_path)
    runs = tmp_path / "grid.jsonl"
    recs = [
        _grid_record(0.1, 1e-3, 1.0, 0, "reached", 700),
        _grid_record(0.1, 1e-3, 1.0, 1, "reached", 900),
        _grid_record(0.1, 1e-3, 1.0, 2, "reached", 800),
        _grid_record(0.7, 3e-3, 0.5, 0, "collapsed", None),
        _grid_record(0.7, 3e-3, 0.5, 1, "reached", 400),
        _grid_record(0.7, 3e-3, 0.5, 2, "diverged", None),
    ]
    runs.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rows = {(r["lr"], r["damping"]): r for r in ca.write_cdm_grid(runs)}
    good, bad = rows[(0.1, 1.0)], rows[(0.7, 0.5)]
    assert (good["reached"], good["t_gen99_median"], good["t_gen99_per_seed"]) == (
        3,
        800.0,
        "700,900,800",
    )
    assert (bad["reached"], bad["collapsed"], bad["diverged"], bad["t_gen99_median"]) == (
        1,
        1,
        1,
        None,
    )
    assert good["eta_h_over_hb_bound"] == pytest.approx(0.1 * ca.H_SWITCH / (2 * 1.98))
    md = (tmp_path / "cdm_grid.md").read_text()
    assert "η 0.1, λ 0.001, ζ 1: median 800" in md and "1 of 2" in md


def test_flat_minima_table_takes_each_run_s_first_probe_at_a_level(tmp_path, monkeypatch):
    cf = _script("claims_flat")
    monkeypatch.setattr(cf, "RUNS", tmp_path / "flat.jsonl")
    monkeypatch.setattr(cf.cn, "OUT", tmp_path)

    def probe(step, why, sharp, norm):
        return dict(
            step=step,
            why=why,
            loss=0.1,
            train_acc=1.0,
            val_acc=0.5,
            weight_norm=norm,
            sharpness=sharp,
        )

    recs = [
        dict(
            method="adamw5",
            seed=0,
            probes=[
                probe(100, ["loss<=1", "loss<=0.3"], 2.0, 60.0),
                probe(300, ["loss<=0.1", "t_gen99"], 0.5, 40.0),
            ],
        ),
        dict(method="adamw5", seed=1, probes=[probe(120, ["loss<=1"], 4.0, 70.0)]),
    ]
    cf.RUNS.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cf.analyse()
    rows = {r["at"]: r for r in csv.DictReader((tmp_path / "flat.csv").open())}
    assert float(rows["loss<=1"]["sharpness"]) == 3.0  # median of 2 and 4
    assert float(rows["loss<=1"]["weight_norm"]) == 65.0
    assert rows["loss<=0.1"]["reached"] == "1" and float(rows["loss<=0.1"]["step"]) == 300
    assert rows["loss<=0.01"]["reached"] == "0" and rows["loss<=0.01"]["sharpness"] == ""
    assert rows["t_gen99"]["seeds_sharpness"] == "0.5;—"


def _tf_result(path: Path, target: str, lr, wd, seed, *, t99=None, status="completed", **kw):
    opt = {"_target_": target, "lr": lr, "weight_decay": wd, "damping": kw.pop("damping", 1.0)}
    if "momentum" in kw:
        opt["momentum"] = kw.pop("momentum")
    rec = {
        "config": {"optimizer": opt},
        "events": kw.pop("events", [{"event": "switch", "step": 140}]),
        "seed": seed,
        "status": status,
        "t_switch": 140,
        "t_interp": 120,
        "t_gen99": t99,
        "steps": t99 or 1500,
        "final_train_acc": kw.pop("train_acc", 1.0),
        "final_weight_norm": 30.0,
        "code": {"git_commit": "0123456789abcdef"},
    }
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(rec))


def test_transformer_claims_count_every_outcome_and_fit_the_law_on_reached_runs(tmp_path):
    ct = _script("claims_tf")
    cdm, l2 = "groktimizer.CDM", "groktimizer.AdamCDML2"
    # raw CDM zeta 1 on an exact law k = 10 / sqrt(eta*lam): slope -0.5 whatever the eta
    for i, (lr, wd) in enumerate([(0.01, 1e-3), (0.03, 1e-3), (0.03, 1e-2)]):
        k = round(10 / math.sqrt(lr * wd))
        _tf_result(tmp_path / f"law{i}", cdm, lr, wd, 0, t99=140 + k)
    _tf_result(tmp_path / "div", cdm, 0.1, 1e-3, 0, status="diverged")
    _tf_result(tmp_path / "col", cdm, 0.03, 1e-2, 1, train_acc=0.3)
    _tf_result(tmp_path / "b0", l2, 2e-4, 5, 0, momentum=0.0)  # not reached: counted, not fitted
    auto = [{"event": "switch", "step": 140, "auto_lr": {"lr": 0.15, "weight_decay": 0.006}}]
    _tf_result(tmp_path / "auto", cdm, "auto", "auto", 2, t99=440, events=auto)
    _tf_result(tmp_path / "run", cdm, 0.03, 1e-3, 1, t99=None, status="running")  # skipped
    runs = ct.load([tmp_path])
    assert len(runs) == 7
    by = {(r["family"], r["eta"], r["lam"], r["seed"]): r for r in runs}
    assert by[("raw CDM zeta=1", 0.1, 1e-3, 0)]["outcome"] == "diverged"
    assert by[("raw CDM zeta=1", 0.03, 1e-2, 1)]["outcome"] == "collapsed"
    assert by[("Adam-l2 beta=0", 2e-4, 5.0, 0)]["outcome"] == "not reached"
    assert by[("raw CDM zeta=1 auto", 0.15, 0.006, 2)]["k99"] == 300
    cells = {(c["family"], c["eta"], c["lam"]): c for c in ct.cells(runs)}
    mixed = cells[("raw CDM zeta=1", 0.03, 1e-2)]
    assert (mixed["runs"], mixed["reached"], mixed["collapsed"], mixed["median_k99"]) == (
        2,
        1,
        1,
        None,
    )
    assert cells[("raw CDM zeta=1", 0.01, 1e-3)]["median_k99"] == round(10 / math.sqrt(1e-5))
    fits = {f["family"]: f for f in ct.fits(runs) if f["eta"] == "pooled"}
    assert fits["raw CDM zeta=1"]["reached"] == 3
    assert fits["raw CDM zeta=1"]["slope"] == pytest.approx(-0.5, abs=2e-3)
    assert fits["Adam-l2 beta=0"]["slope"] is None
    per_eta = [f for f in ct.fits(runs) if f["eta"] != "pooled"]
    assert per_eta == []  # no single eta reached at 3 lambdas here


def test_adam_cdm_l2_floors_the_carried_metric_before_its_first_step():
    """The curvature probe at the switch reads ``denominators()`` before phase 2's first step:
    the floor f·s must apply there already, with s measured from the second moments carried
    from Adam (as the first step will measure it), else an entry whose v decayed towards 0 (an
    embedding row no recent minibatch touched) inflates the measured curvature."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    adam = torch.optim.Adam([w], lr=1e-3, betas=(0.9, 0.98))
    w.grad = torch.tensor([0.3, 0.2, 1e-6], dtype=torch.float64)  # the third: almost no v
    adam.step()
    opt = AdamCDML2([w], lr=0.01, weight_decay=0.5, metric_decay=True, scale_floor=0.1)
    opt.init_from_adam(adam)
    v_hat = adam.state[w]["exp_avg_sq"] / (1 - 0.98)
    s = float(v_hat.sqrt().add(1e-8).median())  # the median of √v̂ + ε (0.2), as step 1 finds
    (d,) = opt.denominators()
    assert float(d[2]) == pytest.approx(0.1 * s + 1e-8, rel=1e-6)  # floored, not √v̂ ≈ 1e-6
    assert torch.allclose(d[:2], v_hat[:2].sqrt() + 1e-8, rtol=1e-12)  # above the floor: as is
    assert opt.param_groups[0]["metric_scale"] is None  # measured, not fixed, before the step
    (pre,) = opt.preconditioner()
    assert torch.allclose(pre, d.rsqrt(), rtol=1e-12)
