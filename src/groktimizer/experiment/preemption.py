"""SIGTERM / SIGUSR2 become a flag the loop reads between steps (checkpoint, then exit 143)."""

from __future__ import annotations

import signal
from typing import Any

EXIT_INTERRUPTED = 143  # 128 + SIGTERM: schedulers treat it as "killed", submitit requeues
SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class StopSignals:
    """Installs handlers that record the signal in ``owner._stop_signal``; restores on exit."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in SIGNALS:
            try:
                self.previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not in the main thread (e.g. some launchers)
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        # after training a SIGTERM must stop the process again, not set a flag nobody reads
        for sig, prev in self.previous.items():
            try:
                signal.signal(sig, prev)
            except (ValueError, TypeError):
                pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.owner._stop_signal = signum

    def chain(self, signum: int) -> None:
        """Call the handler that was there before ours (a launcher's requeue logic)."""
        prev = self.previous.get(signum)
        if callable(prev):
            prev(signum, None)
