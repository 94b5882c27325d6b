"""Weights & Biases logging that never costs a run its local results.

``mode``: online | offline | disabled. Online without an API key, or when the service cannot be
reached, falls back to offline with one warning; any later logging error is warned about once
and ignored. The API key is read by wandb from its own environment / netrc and never written by us.
"""

from __future__ import annotations

import os
import warnings
from typing import Any


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
        self.run = None
        self._warned = False
        if mode == "disabled":
            return
        import wandb

        os.makedirs(directory, exist_ok=True)
        kwargs = dict(
            project=project,
            entity=entity,
            group=group,
            tags=list(tags),
            job_type=job_type,
            name=name,
            config=config,
            dir=directory,
            reinit="create_new",
        )
        if mode == "online" and not _has_api_key():
            warnings.warn(
                "wandb: logger.mode=online but no API key is configured; logging offline "
                f"to {directory} (sync later with `wandb sync`)",
                stacklevel=2,
            )
            mode = "offline"
        try:
            self.run = wandb.init(
                mode=mode,
                settings=wandb.Settings(init_timeout=_init_timeout(), silent=True),
                **kwargs,
            )
        except Exception as err:  # noqa: BLE001 -- any failure to reach W&B
            if mode != "online":
                warnings.warn(f"wandb: could not start ({err}); W&B logging off", stacklevel=2)
                return
            warnings.warn(
                f"wandb: online init failed ({type(err).__name__}: {err}); logging offline",
                stacklevel=2,
            )
            try:
                self.run = wandb.init(
                    mode="offline", settings=wandb.Settings(silent=True), **kwargs
                )
            except Exception as err2:  # noqa: BLE001
                warnings.warn(f"wandb: offline init failed too ({err2})", stacklevel=2)

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
                if isinstance(v, (int, float, str, bool)) or v is None:
                    self.run.summary[k] = v

        self._guard(_update)

    def log_image(self, key: str, path: str) -> None:
        def _img() -> None:
            import wandb

            self.run.log({key: wandb.Image(path)})

        self._guard(_img)

    def finish(self, exit_code: int = 0) -> None:
        self._guard(lambda: self.run.finish(exit_code=exit_code))
        self.run = None


def _init_timeout() -> float:
    """Seconds to wait for W&B before falling back offline: wandb's own WANDB_INIT_TIMEOUT, 60."""
    try:
        return float(os.environ.get("WANDB_INIT_TIMEOUT", "60"))
    except ValueError:
        return 60.0


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
