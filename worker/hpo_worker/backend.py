"""The Optuna journal backend of hpo-worker: one fenced Redis list per study on the writer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from optuna.storages.journal import BaseJournalBackend

from .journal import READ_CHUNK, Replay
from .store import Fenced, Store


class FencedJournalBackend(BaseJournalBackend):
    """Optuna journal backend on the writer master: a Redis list appended by a fenced Lua script.

    Reading is one LRANGE per chunk (Optuna's own Redis backend does one GET per entry).
    It also tracks, while reading, which worker id runs each RUNNING trial, so the
    reaper can match trials to heartbeats without extra writes.
    """

    def __init__(self, store: Store, hb_ttl_ms: int, study: str) -> None:
        self.store = store
        self.study = study
        self.key = store.journal_key(study)
        self.hb_ttl_ms = hb_ttl_ms
        self.generation = store.generation
        self.my_worker_ids: set[str] = set()
        self.replay = Replay()  # entries read so far, replayed once more for the reaper
        self.trial_owner: dict[int, str] = self.replay.owner  # trial id -> worker id that runs it
        self._tracked = 0
        # per thread: the entries its last append returned, for its next read (read-your-writes
        # without a round trip; another thread's read must not stop at this thread's view)
        self._local = threading.local()
        store.journal_pos[self.key] = (0, "")  # a new view has read nothing yet

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_local"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _check_generation(self) -> None:
        if self.store.generation != self.generation:
            raise Fenced("the writer changed; this storage view belongs to the previous writer")

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        self._check_generation()
        cached, self._local.cache = getattr(self._local, "cache", None), None
        if cached is not None and cached[0] == log_number_from:
            # entries returned by our own append script: no round trip
            yield from self._entries(log_number_from, cached[1])
            return
        w = self.store.writer
        start = log_number_from
        while True:
            chunk = w.lrange(self.key, start, start + READ_CHUNK - 1)
            yield from self._entries(start, chunk)
            if len(chunk) < READ_CHUNK:
                return
            start += len(chunk)

    def _entries(self, start: int, raws: list[str]) -> Iterator[dict[str, Any]]:
        """Decode entries read at ``start``; note the owners of trials and how far we read."""
        for i, raw in enumerate(raws):
            entry = json.loads(raw)
            if start + i >= self._tracked:
                self.replay.apply(entry)
                self._tracked = start + i + 1
            yield entry
        if raws and start + len(raws) >= self.store.journal_pos.get(self.key, (0, ""))[0]:
            self.store.journal_pos[self.key] = (start + len(raws), raws[-1])

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._check_generation()
        # Optuna's JournalStorage puts its worker id in every entry; other callers may not
        worker_id = logs[0].get("worker_id", "") if logs else ""
        if worker_id:
            self.my_worker_ids.add(worker_id)
        read_from = self._tracked
        res = self.store.append(self.study, worker_id, self.hb_ttl_ms if worker_id else 0, read_from,
                                [json.dumps(x) for x in logs])
        if len(res) > 1 and int(res[0]) == read_from + len(res) - 1:
            self._local.cache = (read_from, res[1:])
