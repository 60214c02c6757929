"""Graceful stop on SIGTERM and SIGINT, what SLURM and Kubernetes send before they kill a job (and Ctrl-C).

While `train()` runs inside `StopRequest`, the first SIGTERM or SIGINT only records the signal. The loop finishes
the step in progress, writes a checkpoint and raises `Preempted`; `poise train` (and `poise compare`) print one line
naming the step and the checkpoint, and exit with status 128 + the signal's number: 143 for SIGTERM, 130 for SIGINT,
the status a shell reports for a process that signal killed. `--resume` continues the run bit for bit. A second
signal exits at once (SystemExit with the same status), without a checkpoint; the newest complete one stays.

Several processes (`accelerate launch`): every rank gets the signal from the launcher or the scheduler, and the ranks
agree after each step (a max over ranks), so all of them stop after the same step. Handlers are installed only from
the main thread (Python's rule); elsewhere a signal keeps its default action.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_status(signum: int) -> int:
    """128 + signum: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + int(signum)


class Preempted(Exception):
    """The run stopped after `step` on signal `signum`, with its checkpoint written to `checkpoint`."""

    def __init__(self, signum: int, step: int, checkpoint):
        self.signum, self.step, self.checkpoint = int(signum), step, checkpoint
        super().__init__(f"{signal.Signals(signum).name} received: stopped after step {step} with a checkpoint in "
                         f"{checkpoint}")


class StopRequest:
    """Context manager that turns the first SIGTERM / SIGINT into a request (`signum`) and a second into an
    immediate SystemExit(128 + signum). The previous handlers come back on exit."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second signal: stop now
            raise SystemExit(exit_status(signum))
        self.signum = signum

    def requested(self, dist=None) -> bool:
        """True when a signal arrived on this process, or on any rank when `dist` (a Dist) spans several."""
        if dist is None or dist.world == 1:
            return self.signum is not None
        signum = dist.max(float(self.signum or 0))  # every rank learns a signal number, even one that got none
        if signum and self.signum is None:
            self.signum = int(signum)
        return bool(signum)
