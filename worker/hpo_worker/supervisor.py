"""--processes N: fork N worker processes, forward SIGTERM/SIGINT to them, collect their exit codes."""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from typing import TYPE_CHECKING, Any, Callable

from .objective import ObjectiveError

if TYPE_CHECKING:
    from .runner import Worker

log = logging.getLogger("hpo_worker")


def run_processes(make_worker: Callable[[int], Worker], processes: int) -> int:
    """Fork N children, each a Worker; forward SIGTERM/SIGINT; exit 0 if all stopped cleanly."""
    if processes <= 1:
        return _run_child(make_worker, 0)
    children: list[int] = []
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    # installed before forking: a stop that arrives while children start is not lost
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(processes):
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent only; it forwards once
            code = 1
            try:
                code = _run_child(make_worker, index)
            except ObjectiveError as exc:  # the import failed in this child only (checked before forking)
                print(f"hpo-worker: error: {exc}", file=sys.stderr)
                code = 2
            except BaseException:  # noqa: BLE001 - report anything, exit non-zero
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)
        for signum in received:  # a signal that came before this child existed
            os.kill(pid, signum)
    worst = 0
    for pid in children:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except ChildProcessError:
                status = 0
                break
            except InterruptedError:
                continue
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            log.error("worker process %d exited with %d", pid, code)
            worst = worst or (code if code > 0 else 1)
    return worst


def _run_child(make_worker: Callable[[int], Worker], index: int) -> int:
    """Build a worker (importing the objective may take a while) without losing a stop signal."""
    early: list[int] = []

    def remember(signum: int, frame: Any) -> None:
        early.append(signum)

    signal.signal(signal.SIGTERM, remember)
    signal.signal(signal.SIGINT, remember)
    worker = make_worker(index)
    worker.signals.install()
    if signal.SIGTERM in early or early.count(signal.SIGINT) > 1:
        worker.signals.stop_event.set()
    elif early:
        worker.signals.stop_after_trial = True
    if worker.signals.stop_event.is_set() or worker.signals.stop_after_trial:
        log.warning("stop requested while starting; exiting")
        return 0
    return worker.run()
