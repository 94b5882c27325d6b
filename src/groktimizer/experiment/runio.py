"""Files a run writes: atomic JSON / checkpoints, the metrics log, code version.

Everything is written to a temporary file in the same directory and renamed, so a crash never
leaves a truncated ``results.json`` or checkpoint that a resume or a table build would trust.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

RESULTS = "results.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
_ATOMIC_NAMES = (RESULTS, METRICS, CHECKPOINT, CONFIG)

# config keys (dotted prefixes) that do not change a run's numbers: a resume may change them, and
# the table builder never splits a group on them
RUN_INVARIANT_KEYS = (
    "trainer.resume",
    "trainer.progress",
    "trainer.plots",
    "trainer.device",
    "trainer.ensemble",
    "trainer.compile",
    "trainer.checkpoint_every",
    "trainer.threads",
    "experiment_name",
    "logger",
    "launcher",
    "hydra",
    "hparams_search",
)


def is_run_invariant(key: str) -> bool:
    return any(
        key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in RUN_INVARIANT_KEYS
    )


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(x: Any) -> Any:
    """Floats that JSON cannot hold (nan, inf) become strings so the file stays valid JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    return x


def write_json(path: str | os.PathLike, obj: Any) -> None:
    data = json.dumps(_jsonable(obj), indent=2, sort_keys=True).encode()
    _atomic_write(Path(path), lambda f: f.write(data + b"\n"))


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def write_text(path: str | os.PathLike, text: str) -> None:
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def save_checkpoint(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's tensors and plain data; ValueError (one line) for anything else.

    ``weights_only=True``: a checkpoint is data, never code, so a file holding pickled objects
    (which could run code when unpickled) is refused, as is a damaged one.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(
            f"refusing checkpoint {path}: it holds objects other than tensors and plain data "
            f"(loaded with weights_only=True: {first}); use trainer.resume=false to start over"
        ) from err
    except (RuntimeError, EOFError) as err:
        raise ValueError(
            f"checkpoint {path} is damaged ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}); "
            "use trainer.resume=false to start over"
        ) from err


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of writes a crash cut short (the final files are intact)."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        if tmp.is_file() and any(tmp.name.startswith(f".{n}.") for n in _ATOMIC_NAMES):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


class MetricsLog:
    """Append-only JSON-lines metrics file, one line per evaluation."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(_jsonable(row), sort_keys=True) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = []
        with open(self.path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a crash: everything after it is not trusted
        return rows

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Keep rows with step <= `step` (resuming from a checkpoint taken at `step`)."""
        rows = [r for r in self.read() if r["step"] <= step]
        write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        return rows


def hardware() -> str:
    """One line naming the machine a figure was measured on (CPU, cores, GPU, torch)."""
    import platform

    line = (
        f"{platform.platform()}; {platform.processor() or platform.machine()}; "
        f"{os.cpu_count()} CPUs; python {platform.python_version()}; torch {torch.__version__}"
    )
    if torch.cuda.is_available():
        line += f"; GPU {torch.cuda.get_device_name(0)}"
    return line


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """Command, date, code version and hardware: the header of every committed result."""
    import datetime as _dt
    import sys

    argv = list(sys.argv if argv is None else argv)
    code = code_version()
    commit = (code.get("git_commit") or "unknown")[:12]
    if code.get("git_dirty"):
        commit += " (uncommitted changes)"
    return {
        "command": "python " + " ".join(argv),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": commit,
        "hardware": hardware(),
        "code": code,
    }


def code_version() -> dict[str, Any]:
    """Git commit of the code (and whether the tree had uncommitted changes), when available."""
    here = Path(__file__).resolve().parent
    out: dict[str, Any] = {"git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=here,
                capture_output=True,
                text=True,
                timeout=10,
            )
            out["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        out["package_version"] = version("groktimizer")
    except Exception:  # noqa: BLE001 -- running from a source tree without installing
        out["package_version"] = None
    out["torch_version"] = torch.__version__
    return out
