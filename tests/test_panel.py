"""The regression panel's verdicts and its jobs (``scripts/panel.py``)."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def panel():
    spec = importlib.util.spec_from_file_location("panel", ROOT / "scripts" / "panel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "now, ref, expected",
    [
        (1000, 1000, "same"),
        (1490, 1000, "same"),
        (1510, 1000, "regressed"),
        (None, 1000, "regressed"),  # the reference reached, now not
        (None, None, "same"),  # neither reached
        (2000, None, "improved"),  # reached now, not in the reference
        (600, 1000, "improved"),
        (700, 1000, "same"),
    ],
)
def test_verdict_on_steps(panel, now, ref, expected):
    got = panel.verdict({"t_gen99": now}, {"t_gen99": ref}, 1.5, 0.005, at_budget=False)
    assert got == expected


def test_verdict_at_the_budget_and_without_a_reference(panel):
    v = panel.verdict
    assert v({"final_val_acc": 0.930}, {"final_val_acc": 0.936}, 1.5, 0.005, True) == "regressed"
    assert v({"final_val_acc": 0.933}, {"final_val_acc": 0.936}, 1.5, 0.005, True) == "same"
    assert v({"final_val_acc": 0.942}, {"final_val_acc": 0.936}, 1.5, 0.005, True) == "improved"
    assert v({"t_gen99": 10}, None, 1.5, 0.005, False) == "new"


def test_every_job_names_a_setting_of_the_suite(panel):
    settings = {p.stem for p in (ROOT / "conf" / "setting").glob("*.yaml")}
    for name, (setting, steps, extra) in panel.PANEL.items():
        assert setting in settings, name
        assert steps > 0 and all("=" in o for o in extra), name


def test_a_regressed_job_fails_the_run_and_the_table_names_it(panel, tmp_path, monkeypatch):
    """The jobs' runs faked as finished: main() reads them, writes the table and exits 1 on a
    regression against the reference (0 with --write-reference's own figures next time)."""
    out, res, ref = tmp_path / "runs", tmp_path / "res", tmp_path / "ref.json"
    jobs = ["mlp_mb128", "digits_mb50"]
    for name, t, acc in [("mlp_mb128", 2600, 0.991), ("digits_mb50", None, 0.936)]:
        setting = panel.PANEL[name][0]
        d = out / setting / name / "job" / "seed_0"
        d.mkdir(parents=True)
        run = {"t_gen99": t, "final_val_acc": acc, "status": "completed", "steps": 6000}
        run["code"] = {"git_commit": "abcdef0123"}
        (d / "results.json").write_text(json.dumps(run))
    ref.write_text(json.dumps({"code": "1234567", "jobs": {"mlp_mb128": {"t_gen99": 1700}}}))
    monkeypatch.setattr(panel.robustness, "run_job", lambda *a, **k: None)
    args = ["--out", str(out), "--results", str(res), "--reference", str(ref), "--jobs", *jobs]
    assert panel.main(args) == 1  # 2,600 > 1.5 x 1,700
    md = (res / "panel.md").read_text()
    assert "| mlp_mb128 | add97_mlp | trainer.batch_size=128 | 2,600 | 1,700 | regressed |" in md
    assert "| digits_mb50 |" in md and "| new |" in md
    assert panel.main([*args, "--write-reference"]) == 1
    assert json.loads(ref.read_text())["jobs"]["mlp_mb128"]["t_gen99"] == 2600
    assert panel.main(args) == 0  # against its own figures
    with pytest.raises(SystemExit):
        panel.main([*args, "--slower", "1"])


def test_the_default_output_folder_is_per_commit(panel):
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    out = panel.default_out()
    assert out.parent == Path("outputs/multiruns/panel")
    assert out.name.startswith(head or "nogit")
