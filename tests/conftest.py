import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def compose():
    """Compose the project's Hydra config with overrides (as train.py would)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from groktimizer.experiment.config import register_configs

    register_configs()

    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
            return hydra_compose(config_name="train", overrides=list(overrides))

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def train_cli(tmp_path):
    """Run `python train.py ...` in a subprocess with its outputs under tmp_path."""
    import subprocess

    def _run(*args: str, run_dir: Path | None = None, timeout: int = 300, env=None):
        run_dir = run_dir or tmp_path / "run"
        cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", *args]
        full_env = dict(os.environ, **(env or {}))
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=full_env
        )

    return _run
