"""The heartbeat thread of a worker process: keeps its journal worker ids alive,
fences stale masters, follows the writer, and interrupts the objective when the
writer moved under it."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from .backend import FencedJournalBackend
from .interrupts import Interrupts
from .store import NoWriter, Store, WriterLost

log = logging.getLogger("hpo_worker")


class Heartbeat:
    def __init__(self, store: Store, interval: float, ttl_ms: int,
                 backend: Callable[[], FencedJournalBackend | None], interrupts: Interrupts) -> None:
        self.store = store
        self.interval = interval
        self.ttl_ms = ttl_ms
        self.backend = backend  # the worker's current view (rebuilt after a failover)
        self.interrupts = interrupts
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hpo-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _loop(self) -> None:
        n = 0
        while not self.stopped.wait(self.interval):
            n += 1
            backend = self.backend()
            try:
                if backend is not None and backend.generation == self.store.generation and backend.my_worker_ids:
                    self.store.heartbeat(list(backend.my_worker_ids), self.ttl_ms)
                newer = None
                if n % 2 == 0:
                    newer = self.store.fence_stale_masters()
                    self.store.refresh_replicas()
                if newer:
                    log.warning("a master with a newer writer record exists: %s", newer)
                    self.store.elect(stop=self.stopped)
            except WriterLost as exc:
                log.warning("heartbeat: writer %s lost (%s); electing", self.store.record, exc)
                try:
                    self.store.elect(failed=self.store.writer_endpoint, wait=30, stop=self.stopped)
                except NoWriter as exc2:
                    log.error("heartbeat: %s", exc2)
            except Exception:  # noqa: BLE001 - the heartbeat must survive anything
                log.exception("heartbeat error")
            if backend is not None and backend.generation != self.store.generation:
                self.interrupts.writer_has_moved()
