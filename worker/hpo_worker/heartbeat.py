"""The two background threads of a worker process.

- The heartbeat keeps its journal worker ids alive every ``heartbeat_interval``
  and does nothing that could wait on another master: a beat that comes late
  gets a live trial reaped. It keeps beating right after a change of writer,
  before the trial loop rebuilt its view, and keeps the ids of the previous
  view alive until their trials are settled.
- The watch looks at every master every other interval: fences stale writer
  records, follows a newer writer, re-counts the replicas worth a WAIT.

Either one interrupts the objective when the writer moved under the view the
trial loop uses.
"""

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
        self.settling: set[str] = set()  # worker ids of the view before a failover, until settled
        self.stopped = threading.Event()

    def start(self) -> None:
        for loop, name in ((self._beat, "hpo-heartbeat"), (self._watch, "hpo-watch")):
            threading.Thread(target=loop, name=name, daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval):
            backend = self.backend()
            try:
                ids = set(backend.my_worker_ids) if backend is not None else set()
                ids |= self.settling
                if ids:
                    self.store.heartbeat(sorted(ids), self.ttl_ms)
            except WriterLost as exc:
                log.warning("heartbeat: writer %s lost (%s); electing", self.store.record, exc)
                try:
                    self.store.elect(failed=self.store.writer_endpoint, wait=30, stop=self.stopped)
                except NoWriter as exc2:
                    log.error("heartbeat: %s", exc2)
            except Exception:  # noqa: BLE001 - the heartbeat must survive anything
                log.exception("heartbeat error")
            self._note_writer_change()

    def _watch(self) -> None:
        while not self.stopped.wait(2 * self.interval):
            try:
                newer = self.store.fence_stale_masters()
                self.store.refresh_replicas()
                if newer:
                    log.warning("a master with a newer writer record exists: %s", newer)
                    self.store.elect(stop=self.stopped)
            except (*WriterLost, NoWriter) as exc:
                log.warning("watch: %s", exc)  # the heartbeat and the trial loop elect
            except Exception:  # noqa: BLE001 - the watch must survive anything
                log.exception("watch error")
            self._note_writer_change()

    def _note_writer_change(self) -> None:
        backend = self.backend()  # the view the trial loop uses now
        if backend is not None and backend.generation != self.store.generation:
            self.interrupts.writer_has_moved()
