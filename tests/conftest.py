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


def _spawning_helpers(module) -> set[str]:
    """Names of a test module's helper functions that start subprocesses."""
    import inspect

    names = set()
    for name, obj in vars(module).items():
        if inspect.isfunction(obj) and not name.startswith("test_"):
            try:
                if "subprocess" in inspect.getsource(obj):
                    names.add(name)
            except (OSError, TypeError):
                pass
    return names


def pytest_collection_modifyitems(config, items):
    """Every test that starts a subprocess (train.py, a script) is `slow`, whether or not its
    author remembered the marker: `pytest -m "not slow"` is the fast in-process suite."""
    import inspect
    import re

    helpers: dict[object, set[str]] = {}
    for item in items:
        fn = getattr(item, "function", None)
        if fn is None or item.get_closest_marker("slow"):
            continue
        mod = item.module
        if mod not in helpers:
            helpers[mod] = _spawning_helpers(mod)
        src = inspect.getsource(fn)
        calls = {m.group(1) for m in re.finditer(r"\b([A-Za-z_]\w*)\(", src)}
        if "subprocess" in src or "train_cli" in item.fixturenames or calls & helpers[mod]:
            item.add_marker(pytest.mark.slow)
