"""Files a run writes: atomic JSON / checkpoints, the metrics log, code version.

Everything is written to a temporary file in the same directory and renamed, so a crash never
leaves a truncated ``results.json`` or checkpoint that a resume or a table build would trust.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

RESULTS = "results.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
_ATOMIC_NAMES = (RESULTS, METRICS, CHECKPOINT, CONFIG)
CHECKPOINT_KEYS = frozenset({"step", "seeds", "members"})
LOCK = ".run.lock"
SUPERSEDED = "superseded"  # a fresh start moves an earlier run's files here

# config keys (dotted prefixes) that do not change a run's numbers: a resume may change them, and
# the table builder never splits a group on them
RUN_INVARIANT_KEYS = (
    "trainer.resume",
    "trainer.progress",
    "trainer.print_config",
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
    # mkstemp creates 0600; a run's files follow the umask like any other file (lab-mates on a
    # shared disk read them)
    os.chmod(tmp, 0o666 & ~_umask())
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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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

    ``weights_only=True``: a checkpoint is data, never code. A file that cannot be read that way
    (random bytes, pickled objects, a truncated write) is damaged or foreign: we say so and never
    suggest unsafe loading. A readable file that is not a run checkpoint is refused too.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- whatever torch raises on bytes it cannot read
        raise ValueError(
            f"checkpoint {path} is damaged or not a GROKtimizer checkpoint "
            f"({type(err).__name__}); use trainer.resume=false to start over (the old files "
            "are moved aside)"
        ) from err
    if not (isinstance(state, dict) and CHECKPOINT_KEYS <= set(state)):
        missing = CHECKPOINT_KEYS - set(state) if isinstance(state, dict) else CHECKPOINT_KEYS
        raise ValueError(
            f"checkpoint {path} is not a GROKtimizer run checkpoint (it lacks "
            f"{', '.join(sorted(missing))}); use trainer.resume=false to start over "
            "(the old files are moved aside)"
        )
    return state


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

    def read(self, report: bool = False) -> list[dict[str, Any]]:
        """Every valid row (a JSON object with an integer ``step``), in file order.

        A bad line (cut by a crash, edited, or foreign) is skipped, never the rows after it;
        with `report` each one is named on stderr.
        """
        rows, bad = [], []
        if not self.path.exists():
            return rows
        with open(self.path, errors="replace") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                if isinstance(row, dict) and type(row.get("step")) is int:
                    rows.append(row)
                else:
                    bad.append(n)
        if bad and report:
            shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
            print(
                f"warning: {self.path}: skipped {len(bad)} damaged line(s) (line {shown})",
                file=sys.stderr,
            )
        return rows

    def restore(self, step: int, saved: list[dict[str, Any]] | None = None) -> list[dict]:
        """Rewrite the log as the rows up to `step`: the valid rows on disk, with any row the
        checkpoint saved (`saved`) that the file lost put back in its place."""
        on_disk = [r for r in self.read(report=True) if r["step"] <= step]
        by_step = {r["step"]: r for r in (saved or []) if r["step"] <= step}
        missing = len(set(by_step) - {r["step"] for r in on_disk})
        by_step.update((r["step"], r) for r in on_disk)
        if missing:
            print(
                f"warning: {self.path}: {missing} row(s) rebuilt from the checkpoint",
                file=sys.stderr,
            )
        rows = [by_step[k] for k in sorted(by_step)]
        write_text(
            self.path, "".join(json.dumps(_jsonable(r), sort_keys=True) + "\n" for r in rows)
        )
        return rows

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Keep rows with step <= `step` (resuming from a checkpoint taken at `step`)."""
        return self.restore(step)


def move_aside(run_dir: Path, names: tuple[str, ...]) -> Path | None:
    """Move an earlier run's files out of `run_dir` (a fresh start must start clean).

    They go to ``run_dir/superseded/<UTC time>/`` (the table builder skips that folder); returns
    it, or None when there was nothing to move.
    """
    import time

    present = [run_dir / n for n in names if (run_dir / n).exists()]
    if not present:
        return None
    dest = run_dir / SUPERSEDED / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    k = 0
    while dest.exists():
        k += 1
        dest = dest.with_name(dest.name.split("-")[0] + f"-{k}")
    dest.mkdir(parents=True)
    for p in present:
        os.replace(p, dest / p.name)
    return dest


class RunLock:
    """An exclusive lock on a run directory, held for the whole run (``fcntl.flock``).

    A second process that tries the same directory gets a one-line error naming the holder (pid,
    host, start time), instead of both writing every row twice. The OS drops the lock when the
    holder dies, so a killed run never leaves the directory locked.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl
        import socket
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(
                f"run directory {self.path.parent} is in use by {holder}; wait for it, or "
                "choose another hydra.run.dir"
            ) from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class RunLockedError(OSError):
    """The run directory is locked by another live run."""


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
