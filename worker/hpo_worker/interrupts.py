"""Signals inside one worker process, and how they reach the objective.

SIGTERM (or a second SIGINT) raises :class:`StopNow` inside the objective; the
first SIGINT only asks to stop after the trial in flight; SIGUSR1 is sent by
the heartbeat thread when the writer moved and raises :class:`WriterMoved`
inside the objective. Forwarding signals from the parent of ``--processes N``
to its children is :mod:`hpo_worker.supervisor`'s job.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Callable

log = logging.getLogger("hpo_worker")


class StopNow(BaseException):
    """Raised inside the objective by SIGTERM (or a second SIGINT)."""


class WriterMoved(BaseException):
    """Raised inside the objective when the writer master changed under it."""


class Interrupts:
    """The stop flags of one worker process and the handlers that set them."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()  # stop as soon as possible (SIGTERM)
        self.stop_after_trial = False         # first SIGINT
        self.in_objective = False
        self.writer_moved = False
        self._main_thread = threading.main_thread().ident

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGUSR1, self._on_writer_moved)

    def call_objective(self, objective: Callable[..., Any], *args: Any) -> Any:
        """Call the objective where the handlers can interrupt it (StopNow, WriterMoved)."""
        # in_objective first: a move noticed by the heartbeat from here on either is
        # seen just below or finds in_objective set and interrupts with SIGUSR1
        self.in_objective = True
        if self.writer_moved:
            self.in_objective = False
            raise WriterMoved()
        try:
            return objective(*args)
        finally:
            self.in_objective = False

    def writer_has_moved(self) -> None:
        """From the heartbeat thread: interrupt the objective in flight (SIGUSR1 to the main thread)."""
        self.writer_moved = True
        if self.in_objective:
            signal.pthread_kill(self._main_thread, signal.SIGUSR1)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        log.warning("signal %s: stopping now, the trial in flight is ended and requeued",
                    signal.Signals(signum).name)
        self.stop_event.set()
        if self.in_objective:
            self.in_objective = False
            raise StopNow()

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.stop_after_trial or self.stop_event.is_set():
            self._on_sigterm(signum, frame)
            return
        log.warning("SIGINT: finishing the trial in flight, then exiting (SIGINT again to stop now)")
        self.stop_after_trial = True

    def _on_writer_moved(self, signum: int, frame: Any) -> None:
        if self.in_objective and self.writer_moved:
            self.in_objective = False
            raise WriterMoved()
