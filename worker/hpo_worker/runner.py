"""The worker loop: ask, claim, evaluate, tell, and follow the writer when it fails or moves.

Around it: signals (:mod:`.interrupts`), the heartbeat thread (:mod:`.heartbeat`),
the budget (:mod:`.budget`), ending trials by hand and settling them after a
failover (:mod:`.settle`), reaping dead workers' trials (:mod:`.reaper`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import traceback
import uuid
from typing import Any, Callable

import optuna
from optuna.storages import JournalStorage
from optuna.trial import TrialState

from .backend import FencedJournalBackend
from .budget import Budget
from .heartbeat import Heartbeat
from .interrupts import Interrupts, StopNow, WriterMoved
from .objective import BadReturn, objective_values, short_repr, wants_trial
from .reaper import Reaper
from .settle import InFlight, Settle
from .spec import StudySpec
from .store import NoWriter, Store, StoreAuthError, WriterLost, claim_json

log = logging.getLogger("hpo_worker")

# Results kept until a standby acknowledges them (a WAIT that returned fewer replicas).
UNCONFIRMED_KEPT = 16


class ObjectiveMisuse(BaseException):
    """Stops the worker with exit 2: the objective's return value has the wrong type or shape."""


class Worker:
    """One worker process for one study."""

    def __init__(self, spec: StudySpec, store: Store, host: str, objective: Callable[..., Any],
                 index: int = 0) -> None:
        self.spec = spec
        self.worker_key = f"{host}/{index}"
        self.store = store
        self.host = host
        self.objective = objective
        self.pass_trial = wants_trial(objective)
        self.hb_ttl_ms = int(spec.heartbeat_ttl * 1000)
        self.signals = Interrupts()
        self.stop_event = self.signals.stop_event
        self.inflight: InFlight | None = None
        self.unconfirmed: list[InFlight] = []  # results no standby acknowledged yet
        self.backend: FencedJournalBackend | None = None
        self.study: optuna.Study | None = None
        self.evaluations = 0
        self.heartbeat = Heartbeat(store, spec.heartbeat_interval, self.hb_ttl_ms, lambda: self.backend,
                                   self.signals)
        self.reaper = Reaper(spec, store, self.stop_event)
        self.budget = Budget(spec)
        self.settle = Settle(spec, store, host)
        self.profiler = None
        if spec.memray:
            from .memprofile import MemoryProfiler, state_dir

            self.profiler = MemoryProfiler(state_dir() / "memray" / spec.name, spec.memray_keep)

    # ------------------------------------------------------------ view of the study
    def build_view(self) -> None:
        self.backend = FencedJournalBackend(self.store, self.hb_ttl_ms, self.spec.name)
        storage = JournalStorage(self.backend)
        self.study = optuna.create_study(
            storage=storage, study_name=self.spec.name, load_if_exists=True,
            directions=list(self.spec.directions), sampler=self.spec.build_sampler(self.worker_key))
        # GridSampler calls study.stop() when the grid is used up; that is only allowed
        # inside optimize(). We drive ask/tell ourselves and decide when to stop.
        self.study._thread_local.in_optimize_loop = True
        self.signals.writer_moved = False

    def connect(self) -> None:
        self.store.elect(wait=float(os.environ.get("HPO_CONNECT_WAIT", "120")), stop=self.stop_event)
        self.build_view()

    # ------------------------------------------------------------ main loop
    def run(self) -> int:
        self.signals.install()
        try:
            self.connect()
        except NoWriter as exc:
            log.error("%s", exc)
            return 0 if self.stop_event.is_set() else 3
        except StoreAuthError as exc:
            log.error("%s", exc)
            return 2
        self.heartbeat.start()
        t0 = time.monotonic()
        errors = 0
        try:
            while not self.stop_event.is_set() and not self.signals.stop_after_trial:
                timed_out = self.spec.timeout is not None and time.monotonic() - t0 >= self.spec.timeout
                try:
                    # reap first: a dead worker's trial must not stay RUNNING because the
                    # budget was reached meanwhile
                    self.reaper.reap(self.study, self.backend)
                    if timed_out:
                        log.info("budget: timeout %ss reached", self.spec.timeout)
                    if timed_out or self.budget.reached(self.study):
                        self.reaper.before_exit(self.study, self.backend)
                        break
                    self.one_trial()
                    errors = 0
                except (*WriterLost, WriterMoved) as exc:
                    self.recover(exc)
                except ObjectiveMisuse as exc:
                    log.error("%s", exc)
                    return 2
                except Exception:  # noqa: BLE001 - keep serving; give up after a run of failures
                    errors += 1
                    log.error("unexpected error (%d in a row):\n%s", errors, traceback.format_exc())
                    if self.inflight is not None:
                        try:
                            self.settle.requeue(self.study, self.inflight, "worker error")
                        except Exception:  # noqa: BLE001 - the reaper will end it
                            log.exception("could not end the trial in flight; it will be reaped")
                        self.inflight = None
                    if errors >= 10:
                        log.error("giving up after %d errors in a row", errors)
                        return 1
                    self.stop_event.wait(min(30.0, 0.5 * 2 ** errors))
        except NoWriter as exc:
            log.error("%s", exc)
            if not self.stop_event.is_set():
                return 3
        finally:
            self.heartbeat.stop()
            self._drop_heartbeats()
        log.info("worker stopped cleanly (%d evaluations)", self.evaluations)
        return 0

    def one_trial(self) -> None:
        study, spec, settle = self.study, self.spec, self.settle
        trial = study.ask()
        # The claim token names the journal worker id and the trial id: anyone replaying
        # the journal can rebuild it, so reapers can release the claims of dead workers.
        owner = self.backend.trial_owner.get(trial._trial_id, uuid.uuid4().hex)
        inf = InFlight(trial=trial, trial_id=trial._trial_id, number=trial.number,
                       token=f"{owner}/{trial._trial_id}")
        self.inflight = inf
        inf.params = spec.suggest(trial)
        inf.fingerprint = spec.fingerprint(inf.params)
        other = self.store.claim(spec.name, inf.fingerprint, claim_json(inf.token, "RUNNING", inf.number, self.host))
        if other is not None:
            c = json.loads(other)
            if c.get("state") == "FAILED" and c.get("attempts", 0) < spec.max_attempts:
                # failed before, not given up yet: take the claim over (compare-and-set on
                # its owner token; of two workers doing this at once, one wins)
                retry = claim_json(inf.token, "RUNNING", inf.number, self.host, attempts=c["attempts"])
                if self.store.update_claim(spec.name, inf.fingerprint, c["owner"], retry):
                    other = None
                    inf.attempts = int(c["attempts"])
        if other is not None:
            if c.get("state") == "COMPLETE":
                trial.set_user_attr("hpo", settle.attrs(inf, reused_from=c["trial"], reused_host=c["host"]))
                self.inflight = None
                study.tell(trial, c["values"])
                self.store.wait_replicas()
            elif c.get("state") == "FAILED" and c.get("attempts", 0) >= spec.max_attempts:
                # given up: this draw FAILs at once, without evaluating
                trial.set_user_attr("hpo", settle.attrs(inf, point_failed=c["attempts"], failed_like=c["trial"],
                                                        failed_host=c["host"]))
                self.inflight = None
                study.tell(trial, state=TrialState.FAIL)
                time.sleep(0.02)  # do not spin on the same draw
            else:
                trial.set_user_attr("hpo", settle.attrs(inf, duplicate_of=c["trial"], duplicate_host=c["host"],
                                                        duplicate_state="RUNNING"))
                self.inflight = None
                study.tell(trial, state=TrialState.PRUNED)
                time.sleep(0.02)  # the other worker is busy with it; do not spin on the same draw
            return
        inf.claimed = True
        trial.set_user_attr("hpo", settle.attrs(inf))
        if self.stop_event.is_set():
            self._requeue(inf, "stopped before evaluating")
            return
        args = (dict(inf.params), trial) if self.pass_trial else (dict(inf.params),)
        tracked = (self.profiler.track(f"{spec.name}-t{inf.number}-{os.getpid()}") if self.profiler is not None
                   else contextlib.nullcontext())
        try:
            with tracked as peak:
                result = self.signals.call_objective(self.objective, *args)
        except StopNow:
            self._requeue(inf, "SIGTERM")
            return
        except WriterMoved:
            raise
        except optuna.TrialPruned:
            self._peak(trial, inf, peak)
            self.evaluations += 1
            settle.release_claim(inf)
            self.inflight = None
            study.tell(trial, state=TrialState.PRUNED)
            return
        except Exception as exc:  # noqa: BLE001 - the user's objective failed: FAIL, retried up to max_attempts
            self._peak(trial, inf, peak)
            self.evaluations += 1
            settle.failed(study, inf, f"raised {exc!r}", traceback.format_exc())
            self.inflight = None
            return
        self._peak(trial, inf, peak)
        self.evaluations += 1
        try:
            values = objective_values(result, len(spec.directions))
        except BadReturn as exc:
            # a programming error, the same for every trial: stop with one clear message
            msg = f"objective {spec.objective} {exc} (trial {inf.number}, params {inf.params})"
            settle.release_claim(inf)
            self.inflight = None
            trial.set_user_attr("hpo", settle.attrs(inf, error=msg[:500]))
            study.tell(trial, state=TrialState.FAIL)
            raise ObjectiveMisuse(f"{msg}; stopping (exit 2)") from None
        if not all(math.isfinite(v) for v in values):
            settle.failed(study, inf, f"returned {short_repr(result)} (not finite)")
            self.inflight = None
            return
        inf.values = values
        self.store.update_claim(spec.name, inf.fingerprint, inf.token,
                                claim_json(inf.token, "COMPLETE", inf.number, self.host, values=inf.values))
        try:
            study.tell(trial, inf.values)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("trial %d was reaped while it ran; its value stays in the claim and is reused",
                        inf.number)
        self._confirm(inf)
        self.inflight = None

    def _peak(self, trial: optuna.Trial | None, inf: InFlight, peak: Any) -> None:
        """The peak memory memray measured (if it did) into ``inf`` and into the trial's hpo attr."""
        if peak is None or peak.bytes is None:
            return
        inf.peak_memory = peak.bytes
        if trial is not None:
            trial.set_user_attr("hpo", self.settle.attrs(inf))

    def _confirm(self, inf: InFlight) -> None:
        """WAIT for the standbys. A result no standby acknowledged is kept (the last few) and
        recorded again on the next writer if the writer dies before replicating it; one
        acknowledged WAIT covers every earlier write (replication keeps order)."""
        if self.store.wait_replicas() >= max(self.store.replicas, 1):
            self.unconfirmed.clear()
        else:
            self.unconfirmed = [*self.unconfirmed[-(UNCONFIRMED_KEPT - 1):], inf]

    def _requeue(self, inf: InFlight, why: str) -> None:
        self.settle.requeue(self.study, inf, why)
        self.inflight = None

    # ------------------------------------------------------------ failover
    def recover(self, exc: BaseException) -> None:
        """The writer failed or moved: follow it, rebuild the view, settle the trial in flight."""
        log.warning("writer problem (%s: %s); following the writer", type(exc).__name__, exc)
        inf = self.inflight
        old_ids = set(self.backend.my_worker_ids) if self.backend else set()
        self.heartbeat.settling = old_ids  # kept alive on the new writer until settled
        gen = self.backend.generation if self.backend else -1
        if self.store.generation == gen:
            failed = self.store.writer_endpoint if not isinstance(exc, WriterMoved) else None
            self.store.elect(failed=failed, wait=float(os.environ.get("HPO_FAILOVER_WAIT", "120")),
                             stop=self.stop_event)
        while True:
            try:
                self.build_view()
                for done in self.unconfirmed:  # results the old writer may not have passed on
                    self.settle.after_failover(self.study, self.backend, done)
                self.unconfirmed = []
                if inf is not None:
                    self.settle.after_failover(self.study, self.backend, inf)
                self.inflight = None
                self.settle.orphans(self.study, self.backend, old_ids)
                self.heartbeat.settling = set()
                return
            except WriterLost as exc2:
                log.warning("writer failed again during recovery (%s)", exc2)
                self.store.elect(failed=self.store.writer_endpoint, wait=120, stop=self.stop_event)

    def _drop_heartbeats(self) -> None:
        b = self.backend
        if b is None or not b.my_worker_ids:
            return
        try:
            self.store.writer.delete(*[self.store.hb_key(w) for w in b.my_worker_ids])
        except Exception:  # noqa: BLE001 - best effort; the keys expire anyway
            pass
