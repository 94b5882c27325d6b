"""Weights & Biases logging that never costs a run its local results.

``mode``: online | offline | disabled. Online without an API key, or when the service cannot be
reached, falls back to offline with one warning; after one failed online start in a process the
other runs of that process go offline at once (one short wait per job, not one per seed). Any
later logging error is warned about once and ignored. The API key is read by wandb from its own
environment / netrc and never written by us.

One W&B run per training run across preemptions: the run id is stored in the run directory
(``wandb_run_id``) and reused with ``resume="allow"``, so a resumed run appends to the same W&B
run. Offline runs print the ``wandb sync`` command that uploads them when they finish.
"""

from __future__ import annotations

import os
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

RUN_ID_FILE = "wandb_run_id"
_online_failed = False  # set once an online start failed in this process


def run_id_for(directory: str | os.PathLike) -> str:
    """The W&B run id of the run in `directory`: read from it, or made and stored there."""
    path = Path(directory) / RUN_ID_FILE
    if path.exists():
        text = path.read_text().strip()
        if text:
            return text
    run_id = uuid.uuid4().hex[:12]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


class WandbRun:
    def __init__(
        self,
        *,
        mode: str,
        project: str,
        entity: str | None,
        group: str | None,
        tags: list[str],
        job_type: str,
        name: str,
        config: dict[str, Any],
        directory: str,
    ):
        global _online_failed
        self.run = None
        self.mode = mode
        self.directory = directory
        self._warned = False
        if mode == "disabled":
            return
        import wandb

        os.makedirs(directory, exist_ok=True)
        self.run_id = run_id_for(directory)
        kwargs = dict(
            project=project,
            entity=entity,
            group=group,
            tags=list(tags),
            job_type=job_type,
            name=name,
            config=config,
            dir=directory,
            id=self.run_id,
            resume="allow",
            reinit="create_new",
        )
        if mode == "online" and not _has_api_key():
            warnings.warn(
                "wandb: logger.mode=online but no API key is configured; logging offline "
                f"to {directory} (sync later with `wandb sync`)",
                stacklevel=2,
            )
            mode = "offline"
        elif mode == "online" and _online_failed:
            mode = "offline"  # the server was unreachable for an earlier run of this process
        self.mode = mode
        try:
            self.run = wandb.init(mode=mode, settings=_settings(), **kwargs)
        except Exception as err:  # noqa: BLE001 -- any failure to reach W&B
            if mode != "online":
                warnings.warn(f"wandb: could not start ({err}); W&B logging off", stacklevel=2)
                return
            _online_failed = True
            warnings.warn(
                f"wandb: online init failed ({type(err).__name__}: {err}); logging offline "
                "(this process's other runs too)",
                stacklevel=2,
            )
            self.mode = "offline"
            try:
                self.run = wandb.init(mode="offline", settings=_settings(), **kwargs)
            except Exception as err2:  # noqa: BLE001
                warnings.warn(f"wandb: offline init failed too ({err2})", stacklevel=2)
        if self.run is not None:
            # the summary holds the best validation accuracy, not the last
            self._guard(lambda: self.run.define_metric("val_acc", summary="max"))
            self._guard(lambda: self.run.define_metric("train_loss", summary="min"))

    def _guard(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            if not self._warned:
                warnings.warn(f"wandb: logging failed ({err}); continuing", stacklevel=3)
                self._warned = True

    def log(self, row: dict[str, Any], step: int) -> None:
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        self._guard(lambda: self.run.log(scalars, step=step))

    def summary(self, results: dict[str, Any]) -> None:
        def _update() -> None:
            for k, v in results.items():
                if k == "best_val_acc":
                    continue  # define_metric keeps val_acc's max; this is the same number
                if isinstance(v, (int, float, str, bool)) or v is None:
                    self.run.summary[k] = v

        self._guard(_update)

    def log_image(self, key: str, path: str) -> None:
        def _img() -> None:
            import wandb

            self.run.log({key: wandb.Image(path)})

        self._guard(_img)

    def finish(self, exit_code: int = 0) -> None:
        offline = self.run is not None and self.mode == "offline"
        self._guard(lambda: self.run.finish(exit_code=exit_code))
        self.run = None
        if offline:
            print(
                f"wandb: offline run saved; upload it with: {sync_command(self.directory)}",
                file=sys.stderr,
            )


def sync_command(directory: str | os.PathLike) -> str:
    """``wandb sync <the offline run folders of this run>`` (paths relative to the cwd)."""
    run_id = (Path(directory) / RUN_ID_FILE).read_text().strip()
    found = sorted(Path(directory).glob(f"wandb/offline-run-*-{run_id}"))
    paths = [os.path.relpath(p) for p in found] or [os.path.relpath(Path(directory) / "wandb")]
    return "wandb sync " + " ".join(paths)


def _settings() -> Any:
    import wandb

    return wandb.Settings(init_timeout=_init_timeout(), silent=True)


def _init_timeout() -> float:
    """Seconds to wait for W&B before falling back offline: WANDB_INIT_TIMEOUT, else 15."""
    try:
        return float(os.environ.get("WANDB_INIT_TIMEOUT", "15"))
    except ValueError:
        return 15.0


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        rc = netrc.netrc()
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1]
        return rc.authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
