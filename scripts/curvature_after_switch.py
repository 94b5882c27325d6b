"""How the curvature binding phase 2 moves in the first steps after the switch (the default).

Trains a robustness-suite setting with the default GROKtimizer (one seed) and, at fixed offsets
after the switch, measures what the step cap's loosening reads: the top eigenvalue h of the
curvature in phase 2's metric (20 Lanczos HVPs, warm-started), heavy ball's bound on η at the
switch's λ for that h (the rule's fraction), and cos between the last step's gradient and the
full-batch one. The tuner's own state is left as it was, so the run is the default's.

    python scripts/curvature_after_switch.py --settings parity40_3 add97_tf1 add97_mlp \
        --extra "add97_tf1:model.n_layers=2 dataset=modular_sub"

Writes one JSON line per measurement to outputs/results/autotune/curvature_after_switch.jsonl
and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

from groktimizer import autotune, biphasic
from groktimizer.experiment.config import register_configs
from groktimizer.experiment.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
OFFSETS = (10, 20, 30, 40, 60, 80, 100)
STATE = ("h", "eigvec", "hvps", "counts", "grad_agreement", "noise_factor", "_last_probe_hvps")


class TracingTuner(autotune.Phase2Tuner):
    """The default tuner; after each phase-2 observation at an offset in ``OFFSETS`` it measures
    the curvature and the gradient's agreement, then restores its own state."""

    rows: list[dict[str, Any]] = []
    label = ""

    def observe(self, opt, step, metrics, closure):  # type: ignore[override]
        events = super().observe(opt, step, metrics, closure)
        k = int(step) - int(self.switch_step)
        if k in OFFSETS and closure is not None:
            saved = {a: copy.copy(getattr(self, a, None)) for a in STATE}
            self._probe(opt, closure, 20, warm=True)
            self._measure_noise(opt, closure)
            zeta, nesterov = autotune._heavy_ball_form(opt)
            wd = float(self.weight_decay or 0.0)
            bound = autotune.stable_lr(abs(self.h), wd, self.lr_fraction, zeta, nesterov)
            self.rows.append(
                {
                    "run": self.label,
                    "offset": k,
                    "h": self.h,
                    "h_switch": self.h_switch,
                    "lr": self.lr,
                    "bound_over_lr": bound / float(self.lr),
                    "cos": self.grad_agreement,
                    "train_acc": metrics.get("train_acc"),
                    "train_loss": metrics.get("train_loss"),
                    "events": [e["event"] + ":" + str(e.get("reason", "")) for e in events],
                }
            )
            for a, v in saved.items():
                setattr(self, a, v)
        return events


def run(setting: str, extra: list[str], seed: int, steps: int) -> dict[str, Any]:
    TracingTuner.label = " ".join([setting, *extra])
    overrides = [
        "+experiment=robustness",
        f"+setting={setting}",
        "method=groktimizer",
        f"trainer.max_steps={steps}",
        "trainer.threads=1",
        f"trainer.seeds=[{seed}]",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides=overrides)
    trainer = Trainer(cfg, tempfile.mkdtemp())
    trainer.prepare()
    return trainer.train()[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", nargs="+", default=["parity40_3", "add97_tf1", "add97_mlp"])
    ap.add_argument(
        "--extra", action="append", default=[], help="SETTING:OVERRIDES, one more run of it"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs/results/autotune")
    args = ap.parse_args(argv)
    runs = [(s, []) for s in args.settings]
    for item in args.extra:
        setting, _, rest = item.partition(":")
        runs.append((setting, rest.split()))
    register_configs()
    biphasic.Phase2Tuner = TracingTuner  # GROKtimizer builds its default tuner from this name
    for setting, extra in runs:
        res = run(setting, extra, args.seed, args.steps)
        print(f"{TracingTuner.label}: t_switch {res.get('t_switch')}, t_gen99 {res.get('t_gen99')}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "curvature_after_switch.jsonl"
    with path.open("w") as fh:
        for row in TracingTuner.rows:
            fh.write(json.dumps(row) + "\n")
    print("| run | +steps | h | h at switch | bound / η | cos | train acc | train loss |")
    print("|---|---|---|---|---|---|---|---|")
    for r in TracingTuner.rows:
        cos = "n/a" if r["cos"] is None else f"{r['cos']:.2f}"
        print(
            f"| {r['run']} | {r['offset']} | {r['h']:.3g} | {r['h_switch']:.3g} | "
            f"{r['bound_over_lr']:.2f} | {cos} | {r['train_acc']:.3f} | {r['train_loss']:.3g} |"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
