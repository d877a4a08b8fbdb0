"""Ending a trial by hand, atomically with its claim (one fenced ``end`` script):
FAIL and requeue its params, a failed evaluation (retried up to max_attempts),
the trial in flight after a writer failover, and orphans of an older view."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import distribution_to_json
from optuna.trial import TrialState

from . import journal
from .backend import FencedJournalBackend
from .spec import StudySpec
from .store import Store, claim_json

log = logging.getLogger("hpo_worker")


@dataclass
class InFlight:
    trial: Any  # optuna.Trial (None for an orphan found in the journal)
    trial_id: int
    number: int
    token: str
    params: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    claimed: bool = False
    values: list[float] | None = None
    attempts: int = 0  # failed evaluations of these params before this one
    started: float = field(default_factory=time.time)
    peak_memory: int | None = None  # bytes, measured by memray (spec worker.memray)


class Settle:
    def __init__(self, spec: StudySpec, store: Store, host: str) -> None:
        self.spec = spec
        self.store = store
        self.host = host
        self.distributions = spec.distributions()

    def attrs(self, inf: InFlight, **extra: Any) -> dict[str, Any]:
        """The ``hpo`` user attr of a trial."""
        attrs = {"host": self.host, "pid": os.getpid(), "token": inf.token, **extra}
        if inf.peak_memory is not None:
            attrs["peak_memory_bytes"] = inf.peak_memory
        return attrs

    def release_claim(self, inf: InFlight) -> None:
        self.store.update_claim(self.spec.name, inf.fingerprint, inf.token, None)

    def requeue(self, study: Any, inf: InFlight, why: str, trial_in_view: bool = True) -> None:
        """FAIL the trial (if it is in the current view), requeue its params, release its claim: atomically."""
        entries = []
        if trial_in_view:
            entries.append(journal.fail_entry(inf.trial_id))
        if len(inf.params) == len(self.spec.space):
            entries.append(journal.requeue_entry(study._study_id, inf.params, inf.number, why))
        fp = inf.fingerprint if inf.claimed else ""
        # a point that failed before keeps its count of failed attempts
        keep = claim_json(inf.token, "FAILED", inf.number, self.host, attempts=inf.attempts) if inf.attempts else None
        self.store.end_trial(self.spec.name, inf.trial_id, inf.token, entries, fp, keep)
        log.warning("trial %d ended (%s) and its params requeued", inf.number, why)

    def failed(self, study: Any, inf: InFlight, why: str, details: str = "") -> None:
        """The objective raised or returned NaN/inf: FAIL the trial. The claim becomes FAILED
        with the count of attempts; below max_attempts the params are requeued (retried next),
        at max_attempts the point is given up: later draws of it FAIL without evaluating."""
        spec = self.spec
        attempts = inf.attempts + 1
        give_up = attempts >= spec.max_attempts
        log.error("trial %d: objective %s %s: FAIL (attempt %d of %d for these params%s)%s", inf.number,
                  spec.objective, why, attempts, spec.max_attempts,
                  "; given up" if give_up else "; requeued", ":\n" + details if details else "")
        claim = claim_json(inf.token, "FAILED", inf.number, self.host, attempts=attempts, error=why[:300])
        if give_up:
            inf.trial.set_user_attr("hpo", self.attrs(inf, point_failed=attempts, error=why[:300]))
        entries = [journal.fail_entry(inf.trial_id)]
        if not give_up:
            entries.append(journal.requeue_entry(study._study_id, inf.params, inf.number,
                                                 f"attempt {attempts} failed"))
        self.store.end_trial(spec.name, inf.trial_id, inf.token, entries, inf.fingerprint, claim)

    def orphans(self, study: Any, backend: FencedJournalBackend, old_ids: set[str]) -> None:
        """End trials this process started under its previous view (a write whose answer was lost)."""
        if not old_ids:
            return
        owner = backend.trial_owner
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if owner.get(t._trial_id) in old_ids:
                params = t.system_attrs.get("fixed_params") or t.params
                inf = InFlight(trial=None, trial_id=t._trial_id, number=t.number,
                               token=f"{owner[t._trial_id]}/{t._trial_id}",
                               params=dict(params))
                if len(params) == len(self.spec.space):
                    inf.fingerprint = self.spec.fingerprint(params)
                    inf.claimed = True  # released only if the claim carries this trial's token
                self.requeue(study, inf, "orphaned by writer failover")

    def after_failover(self, study: Any, backend: FencedJournalBackend, inf: InFlight) -> None:
        """The trial in flight when the writer failed or moved: record its result on the new
        writer if it has one, else end it and requeue its params."""
        mine = None
        owner = backend.trial_owner.get(inf.trial_id)
        if owner is not None and f"{owner}/{inf.trial_id}" == inf.token:
            mine = study._storage.get_trial(inf.trial_id)
        if inf.values is not None:
            if mine is not None and mine.state == TrialState.COMPLETE:
                return
            if mine is not None and mine.state == TrialState.RUNNING:
                entries = [journal.complete_entry(inf.trial_id, inf.values)]
            else:
                dists = {k: self.distributions[k] for k in inf.params}
                entries = [journal.added_complete_entry(
                    study._study_id, inf.started, inf.values,
                    {k: distribution_to_json(d) for k, d in dists.items()},
                    {k: dists[k].to_internal_repr(v) for k, v in inf.params.items()},
                    self.attrs(inf, recorded_after_failover_from=inf.number))]
            done = claim_json(inf.token, "COMPLETE", inf.number, self.host, values=inf.values)
            if self.store.end_trial(self.spec.name, inf.trial_id, inf.token, entries, inf.fingerprint, done,
                                    result=True):
                self.store.wait_replicas()
                log.warning("trial %d: result recorded on the new writer", inf.number)
            return
        if mine is not None and mine.state != TrialState.RUNNING:
            return
        self.requeue(study, inf, "writer failover", trial_in_view=mine is not None)
