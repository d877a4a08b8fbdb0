"""Reaping: the RUNNING trials of workers whose heartbeat expired are ended (FAIL) and their
params requeued, by any other worker; before exiting at the budget, a worker settles them."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from optuna.trial import TrialState

from . import journal
from .backend import FencedJournalBackend
from .spec import StudySpec
from .store import FAILOVER_SPREAD, Store

log = logging.getLogger("hpo_worker")


class Reaper:
    def __init__(self, spec: StudySpec, store: Store, stop_event: threading.Event) -> None:
        self.spec = spec
        self.store = store
        self.stop_event = stop_event
        self._last_reap = 0.0

    def others_running(self, study: Any, backend: FencedJournalBackend) -> list[tuple[Any, str]]:
        """RUNNING trials of other workers, with the journal worker id that runs each."""
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        cands = [(t, backend.trial_owner.get(t._trial_id)) for t in running]
        return [(t, o) for t, o in cands if o is not None and o not in backend.my_worker_ids]

    def _hb_ttls(self, owners: list[str]) -> list[int]:
        """Remaining ms of each owner's heartbeat key (negative: the key is gone)."""
        pipe = self.store.writer.pipeline(transaction=False)
        for owner in owners:
            pipe.pttl(self.store.hb_key(owner))
        return [int(x) for x in pipe.execute()]

    def _expired(self, study: Any, backend: FencedJournalBackend) -> list[tuple[Any, str]]:
        """RUNNING trials of other workers whose heartbeat key is gone."""
        cands = self.others_running(study, backend)
        if not cands:
            return []
        ttls = self._hb_ttls([o for _, o in cands])
        return [c for c, ttl in zip(cands, ttls) if ttl < 0]

    def before_exit(self, study: Any, backend: FencedJournalBackend) -> None:
        """The budget is reached: before exiting, settle the RUNNING trials of other workers.

        A trial whose owner's heartbeat is refreshed belongs to a live worker, which finishes
        it. One whose heartbeat expires (or is gone) is reaped here. Reaping pauses for
        heartbeat_ttl after connecting (and FAILOVER_SPREAD more after a failover), and a worker
        that died just now keeps its key for up to heartbeat_ttl, so this waits at most
        heartbeat_ttl + 2 x heartbeat_interval (plus FAILOVER_SPREAD after a recent failover)."""
        pause = self.spec.heartbeat_ttl + 2 * self.spec.heartbeat_interval
        deadline = max(time.monotonic(), self.store.failover_at + FAILOVER_SPREAD) + pause
        last: dict[str, int] = {}
        alive: set[str] = set()
        while not self.stop_event.is_set():
            cands = self.others_running(study, backend)
            owners = sorted({o for _, o in cands} - alive)
            if not owners:
                return
            if time.monotonic() > deadline:
                log.warning("budget reached; %d RUNNING trial(s) of other workers left to the next worker's"
                            " reaper", len(cands))
                return
            for owner, ttl in zip(owners, self._hb_ttls(owners)):
                if ttl >= 0 and owner in last and ttl > last[owner]:
                    alive.add(owner)  # its heartbeat was refreshed: a live worker
                last[owner] = ttl
            if any(ttl < 0 for o, ttl in last.items() if o in owners):
                self._last_reap = 0.0
                if self.reap(study, backend):
                    continue
            self.stop_event.wait(min(self.spec.heartbeat_interval, 0.5) / 2)

    def reap(self, study: Any, backend: FencedJournalBackend) -> int:
        """FAIL the RUNNING trials of workers whose heartbeat expired and requeue their params
        (at most once per heartbeat_interval; not within heartbeat_ttl of a change of writer)."""
        now = time.monotonic()
        if now - self._last_reap < self.spec.heartbeat_interval:
            return 0
        self._last_reap = now
        if now - self.store.adopted_at < self.spec.heartbeat_ttl:
            return 0  # heartbeats may not have reached a just-promoted master yet
        if now - self.store.failover_at < self.spec.heartbeat_ttl + FAILOVER_SPREAD:
            return 0  # other workers may not have found the new writer yet: no heartbeat of theirs can
        reaped = 0
        for t, owner in self._expired(study, backend):
            attrs = t.user_attrs.get("hpo", {})
            params = t.system_attrs.get("fixed_params") or t.params
            entries = [journal.fail_entry(t._trial_id)]
            fp = ""
            if len(params) == len(self.spec.space):
                entries.append(journal.requeue_entry(study._study_id, params, t.number, "heartbeat expired"))
                fp = self.spec.fingerprint(params)
            done = self.store.end_trial(self.spec.name, t._trial_id, f"{owner}/{t._trial_id}", entries, fp,
                                        unless_alive=owner)
            if done:
                reaped += 1
                log.warning("reaped trial %d of %s (heartbeat expired): FAIL, params requeued",
                            t.number, attrs.get("host", "?"))
        return reaped
