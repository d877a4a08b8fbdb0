"""The worker loop: ask, claim, evaluate, tell; heartbeats, reaping, signals, failover."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.distributions import distribution_to_json
from optuna.storages import JournalStorage
from optuna.trial import TrialState

from . import journal
from .backend import FencedJournalBackend
from .objective import BadReturn, objective_values, short_repr, wants_trial
from .reaper import Reaper
from .spec import StudySpec
from .store import NoWriter, Store, StoreAuthError, WriterLost, claim_json

log = logging.getLogger("hpo_worker")


class StopNow(BaseException):
    """Raised inside the objective by SIGTERM (or a second SIGINT)."""


class WriterMoved(BaseException):
    """Raised inside the objective when the writer master changed under it."""


class ObjectiveMisuse(BaseException):
    """Stops the worker with exit 2: the objective's return value has the wrong type or shape."""


@dataclass
class InFlight:
    trial: optuna.Trial
    trial_id: int
    number: int
    token: str
    params: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    claimed: bool = False
    values: list[float] | None = None
    attempts: int = 0  # failed evaluations of these params before this one
    started: float = field(default_factory=time.time)


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
        self.stop_event = threading.Event()      # stop as soon as possible (SIGTERM)
        self.stop_after_trial = False            # first SIGINT
        self.in_objective = False
        self.writer_moved = False
        self.inflight: InFlight | None = None
        self.backend: FencedJournalBackend | None = None
        self.study: optuna.Study | None = None
        self.distributions = spec.distributions()
        self.evaluations = 0
        self._main_thread = threading.main_thread().ident
        self._hb_stop = threading.Event()
        self._settling: set[str] = set()  # worker ids of the view before a failover, until settled
        self.reaper = Reaper(spec, store, self.stop_event)
        self._fp_done: dict[int, tuple[bool, str]] = {}  # finished trial id -> (given up?, fingerprint)
        self._scan_from = 0
        self._points_ok: set[str] = set()
        self._points_failed: set[str] = set()
        self._finite = spec.sampler["type"] == "grid" or spec.space_size() is not None

    # ------------------------------------------------------------ signals
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGUSR1, self._on_writer_moved)

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
        self.writer_moved = False

    def connect(self) -> None:
        self.store.elect(wait=float(os.environ.get("HPO_CONNECT_WAIT", "120")), stop=self.stop_event)
        self.build_view()

    # ------------------------------------------------------------ heartbeat thread
    def _heartbeat_loop(self) -> None:
        """Refresh this process's heartbeat keys every heartbeat_interval, and nothing that
        could wait on another master: a beat that comes late gets a live trial reaped."""
        while not self._hb_stop.wait(self.spec.heartbeat_interval):
            backend = self.backend
            try:
                # also right after a change of writer, before the trial loop rebuilt its view: this
                # process is alive and its trial in flight must not be reaped on the new writer
                ids = set(backend.my_worker_ids) if backend is not None else set()
                ids |= self._settling  # ids of a previous view whose trials are not settled yet
                if ids:
                    self.store.heartbeat(sorted(ids), self.hb_ttl_ms)
            except WriterLost as exc:
                log.warning("heartbeat: writer %s lost (%s); electing", self.store.record, exc)
                try:
                    self.store.elect(failed=self.store.writer_endpoint, wait=30, stop=self._hb_stop)
                except NoWriter as exc2:
                    log.error("heartbeat: %s", exc2)
            except Exception:  # noqa: BLE001 - the heartbeat must survive anything
                log.exception("heartbeat error")
            self._note_writer_change()

    def _watch_loop(self) -> None:
        """Every other heartbeat interval: look at every master (fence stale writer records,
        follow a newer writer) and re-count the replicas worth waiting for. A thread of its
        own, so that a master that does not answer never delays a heartbeat."""
        while not self._hb_stop.wait(2 * self.spec.heartbeat_interval):
            try:
                newer = self.store.fence_stale_masters()
                self.store.refresh_replicas()
                if newer:
                    log.warning("a master with a newer writer record exists: %s", newer)
                    self.store.elect(stop=self._hb_stop)
            except (*WriterLost, NoWriter) as exc:
                log.warning("watch: %s", exc)  # the heartbeat and the trial loop elect
            except Exception:  # noqa: BLE001 - the watch must survive anything
                log.exception("watch error")
            self._note_writer_change()

    def _note_writer_change(self) -> None:
        """The writer changed under the view the trial loop uses now: tell the loop, and stop
        the objective (its result could not be recorded under the old view)."""
        backend = self.backend
        if backend is not None and backend.generation != self.store.generation:
            self.writer_moved = True
            if self.in_objective:
                signal.pthread_kill(self._main_thread, signal.SIGUSR1)

    # ------------------------------------------------------------ main loop
    def run(self) -> int:
        self.install_signal_handlers()
        try:
            self.connect()
        except NoWriter as exc:
            log.error("%s", exc)
            return 0 if self.stop_event.is_set() else 3
        except StoreAuthError as exc:
            log.error("%s", exc)
            return 2
        for loop, name in ((self._heartbeat_loop, "hpo-heartbeat"), (self._watch_loop, "hpo-watch")):
            threading.Thread(target=loop, name=name, daemon=True).start()
        t0 = time.monotonic()
        errors = 0
        try:
            while not self.stop_event.is_set() and not self.stop_after_trial:
                timed_out = self.spec.timeout is not None and time.monotonic() - t0 >= self.spec.timeout
                try:
                    # reap first: a dead worker's trial must not stay RUNNING because the
                    # budget was reached meanwhile
                    self.reaper.reap(self.study, self.backend)
                    if timed_out:
                        log.info("budget: timeout %ss reached", self.spec.timeout)
                    if timed_out or self.budget_reached():
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
                            self.end_and_requeue(self.inflight, "worker error")
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
            self._hb_stop.set()
            self._drop_heartbeats()
        log.info("worker stopped cleanly (%d evaluations)", self.evaluations)
        return 0

    def _update_points(self) -> None:
        """Distinct points done: COMPLETE, or given up after max_attempts failures (incremental)."""
        done = self._fp_done
        trials = self.study.get_trials(deepcopy=False)
        while self._scan_from < len(trials) and trials[self._scan_from]._trial_id in done:
            self._scan_from += 1  # finished trials never change: scan from the first unfinished one
        for t in trials[self._scan_from:]:
            if t._trial_id in done or not t.state.is_finished():
                continue
            given_up = t.state == TrialState.FAIL and "point_failed" in (t.user_attrs.get("hpo") or {})
            fp = ""
            if (t.state == TrialState.COMPLETE or given_up) and len(t.params) == len(self.spec.space):
                fp = self.spec.fingerprint(t.params)
                (self._points_failed if given_up else self._points_ok).add(fp)
            done[t._trial_id] = (given_up, fp)

    def budget_reached(self) -> bool:
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if self.spec.n_trials is not None and len(trials) >= self.spec.n_trials:
            log.info("budget: %d COMPLETE trials reached", self.spec.n_trials)
            return True
        if not self._finite:
            return False
        self._update_points()
        ok, failed = self._points_ok, self._points_failed - self._points_ok
        if self.spec.sampler["type"] == "grid":
            if len(ok) + len(failed) >= self.spec.grid_size():
                log.info("grid: every one of its %d points is done (%d COMPLETE, %d given up after %d"
                         " failed attempts)", len(ok) + len(failed), len(ok), len(failed), self.spec.max_attempts)
                return True
        elif failed and len(ok) + len(failed) >= self.spec.space_size():
            # n_trials may be out of reach: given-up points never become COMPLETE
            log.info("space exhausted: every one of its %d points is done (%d COMPLETE, %d given up)",
                     len(ok) + len(failed), len(ok), len(failed))
            return True
        return False

    def _suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        out = {}
        for p in self.spec.space:
            if p.kind == "int":
                v = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            elif p.kind == "float":
                v = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
            else:
                v = trial.suggest_categorical(p.name, list(p.choices))
            out[p.name] = p.canonical(v)
        return out

    def _attrs(self, inf: InFlight, **extra: Any) -> dict[str, Any]:
        return {"host": self.host, "pid": os.getpid(), "token": inf.token, **extra}

    def one_trial(self) -> None:
        study = self.study
        trial = study.ask()
        # The claim token names the journal worker id and the trial id: anyone replaying
        # the journal can rebuild it, so reapers can release the claims of dead workers.
        owner = self.backend.trial_owner.get(trial._trial_id, uuid.uuid4().hex)
        inf = InFlight(trial=trial, trial_id=trial._trial_id, number=trial.number,
                       token=f"{owner}/{trial._trial_id}")
        self.inflight = inf
        inf.params = self._suggest(trial)
        inf.fingerprint = self.spec.fingerprint(inf.params)
        other = self.store.claim(self.spec.name, inf.fingerprint,
                                 claim_json(inf.token, "RUNNING", inf.number, self.host))
        if other is not None:
            c = json.loads(other)
            if c.get("state") == "FAILED" and c.get("attempts", 0) < self.spec.max_attempts:
                # failed before, not given up yet: take the claim over (compare-and-set on
                # its owner token; of two workers doing this at once, one wins)
                retry = claim_json(inf.token, "RUNNING", inf.number, self.host, attempts=c["attempts"])
                if self.store.update_claim(self.spec.name, inf.fingerprint, c["owner"], retry):
                    other = None
                    inf.attempts = int(c["attempts"])
        if other is not None:
            if c.get("state") == "COMPLETE":
                trial.set_user_attr("hpo", self._attrs(inf, reused_from=c["trial"], reused_host=c["host"]))
                self.inflight = None
                study.tell(trial, c["values"])
                self.store.wait_replicas()
            elif c.get("state") == "FAILED" and c.get("attempts", 0) >= self.spec.max_attempts:
                # given up: this draw FAILs at once, without evaluating
                trial.set_user_attr("hpo", self._attrs(inf, point_failed=c["attempts"], failed_like=c["trial"],
                                                       failed_host=c["host"]))
                self.inflight = None
                study.tell(trial, state=TrialState.FAIL)
                time.sleep(0.02)  # do not spin on the same draw
            else:
                trial.set_user_attr("hpo", self._attrs(inf, duplicate_of=c["trial"], duplicate_host=c["host"],
                                                       duplicate_state="RUNNING"))
                self.inflight = None
                study.tell(trial, state=TrialState.PRUNED)
                time.sleep(0.02)  # the other worker is busy with it; do not spin on the same draw
            return
        inf.claimed = True
        trial.set_user_attr("hpo", self._attrs(inf))
        if self.stop_event.is_set():
            self.end_and_requeue(inf, "stopped before evaluating")
            return
        args = (dict(inf.params), trial) if self.pass_trial else (dict(inf.params),)
        try:
            self.in_objective = True  # before the check: a move noted from now on stops the objective
            try:
                if self.writer_moved:
                    raise WriterMoved()
                result = self.objective(*args)
            finally:
                self.in_objective = False
        except StopNow:
            self.end_and_requeue(inf, "SIGTERM")
            return
        except WriterMoved:
            raise
        except optuna.TrialPruned:
            self.evaluations += 1
            self._release_claim(inf)
            self.inflight = None
            study.tell(trial, state=TrialState.PRUNED)
            return
        except Exception as exc:  # noqa: BLE001 - the user's objective failed: FAIL, retried up to max_attempts
            self.evaluations += 1
            self._failed(inf, f"raised {exc!r}", traceback.format_exc())
            return
        self.evaluations += 1
        try:
            values = objective_values(result, len(self.spec.directions))
        except BadReturn as exc:
            # a programming error, the same for every trial: stop with one clear message
            msg = f"objective {self.spec.objective} {exc} (trial {inf.number}, params {inf.params})"
            self._release_claim(inf)
            self.inflight = None
            trial.set_user_attr("hpo", self._attrs(inf, error=msg[:500]))
            study.tell(trial, state=TrialState.FAIL)
            raise ObjectiveMisuse(f"{msg}; stopping (exit 2)") from None
        if not all(math.isfinite(v) for v in values):
            self._failed(inf, f"returned {short_repr(result)} (not finite)")
            return
        inf.values = values
        self.store.update_claim(self.spec.name, inf.fingerprint, inf.token,
                                claim_json(inf.token, "COMPLETE", inf.number, self.host, values=inf.values))
        try:
            study.tell(trial, inf.values)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("trial %d was reaped while it ran; its value stays in the claim and is reused",
                        inf.number)
        self.store.wait_replicas()
        self.inflight = None

    def _failed(self, inf: InFlight, why: str, details: str = "") -> None:
        """The objective raised or returned NaN/inf: FAIL the trial. The claim becomes FAILED
        with the count of attempts; below max_attempts the params are requeued (retried next),
        at max_attempts the point is given up: later draws of it FAIL without evaluating."""
        attempts = inf.attempts + 1
        give_up = attempts >= self.spec.max_attempts
        log.error("trial %d: objective %s %s: FAIL (attempt %d of %d for these params%s)%s", inf.number,
                  self.spec.objective, why, attempts, self.spec.max_attempts,
                  "; given up" if give_up else "; requeued", ":\n" + details if details else "")
        claim = claim_json(inf.token, "FAILED", inf.number, self.host, attempts=attempts, error=why[:300])
        if give_up:
            inf.trial.set_user_attr("hpo", self._attrs(inf, point_failed=attempts, error=why[:300]))
        entries = [journal.fail_entry(inf.trial_id)]
        if not give_up:
            entries.append(journal.requeue_entry(self.study._study_id, inf.params, inf.number,
                                                 f"attempt {attempts} failed"))
        self.store.end_trial(self.spec.name, inf.trial_id, inf.token, entries, inf.fingerprint, claim)
        self.inflight = None

    def _release_claim(self, inf: InFlight) -> None:
        self.store.update_claim(self.spec.name, inf.fingerprint, inf.token, None)

    # ------------------------------------------------------------ ending trials by hand
    def end_and_requeue(self, inf: InFlight, why: str, trial_in_view: bool = True) -> None:
        """FAIL the trial (if it is in the current view), requeue its params, release its claim: atomically."""
        entries = []
        if trial_in_view:
            entries.append(journal.fail_entry(inf.trial_id))
        if len(inf.params) == len(self.spec.space):
            entries.append(journal.requeue_entry(self.study._study_id, inf.params, inf.number, why))
        fp = inf.fingerprint if inf.claimed else ""
        # a point that failed before keeps its count of failed attempts
        keep = claim_json(inf.token, "FAILED", inf.number, self.host, attempts=inf.attempts) if inf.attempts else None
        self.store.end_trial(self.spec.name, inf.trial_id, inf.token, entries, fp, keep)
        log.warning("trial %d ended (%s) and its params requeued", inf.number, why)
        self.inflight = None

    # ------------------------------------------------------------ failover
    def recover(self, exc: BaseException) -> None:
        """The writer failed or moved: follow it, rebuild the view, settle the trial in flight."""
        log.warning("writer problem (%s: %s); following the writer", type(exc).__name__, exc)
        inf = self.inflight
        old_ids = set(self.backend.my_worker_ids) if self.backend else set()
        self._settling = old_ids  # kept alive on the new writer until their trials are settled
        gen = self.backend.generation if self.backend else -1
        if self.store.generation == gen:
            failed = self.store.writer_endpoint if not isinstance(exc, WriterMoved) else None
            self.store.elect(failed=failed, wait=float(os.environ.get("HPO_FAILOVER_WAIT", "120")),
                             stop=self.stop_event)
        while True:
            try:
                self.build_view()
                if inf is not None:
                    self._settle_after_failover(inf)
                self.inflight = None
                self._end_orphans(old_ids)
                self._settling = set()
                return
            except WriterLost as exc2:
                log.warning("writer failed again during recovery (%s)", exc2)
                self.store.elect(failed=self.store.writer_endpoint, wait=120, stop=self.stop_event)

    def _end_orphans(self, old_ids: set[str]) -> None:
        """End trials this process started under its previous view (a write whose answer was lost)."""
        if not old_ids:
            return
        owner = self.backend.trial_owner
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if owner.get(t._trial_id) in old_ids:
                params = t.system_attrs.get("fixed_params") or t.params
                inf = InFlight(trial=None, trial_id=t._trial_id, number=t.number,
                               token=f"{owner[t._trial_id]}/{t._trial_id}",
                               params=dict(params))
                if len(params) == len(self.spec.space):
                    inf.fingerprint = self.spec.fingerprint(params)
                    inf.claimed = True  # released only if the claim carries this trial's token
                self.end_and_requeue(inf, "orphaned by writer failover")

    def _settle_after_failover(self, inf: InFlight) -> None:
        mine = None
        owner = self.backend.trial_owner.get(inf.trial_id)
        if owner is not None and f"{owner}/{inf.trial_id}" == inf.token:
            mine = self.study._storage.get_trial(inf.trial_id)
        if inf.values is not None:
            if mine is not None and mine.state == TrialState.COMPLETE:
                return
            if mine is not None and mine.state == TrialState.RUNNING:
                entries = [journal.complete_entry(inf.trial_id, inf.values)]
            else:
                dists = {k: self.distributions[k] for k in inf.params}
                entries = [journal.added_complete_entry(
                    self.study._study_id, inf.started, inf.values,
                    {k: distribution_to_json(d) for k, d in dists.items()},
                    {k: dists[k].to_internal_repr(v) for k, v in inf.params.items()},
                    {"host": self.host, "pid": os.getpid(), "token": inf.token,
                     "recorded_after_failover_from": inf.number})]
            done = claim_json(inf.token, "COMPLETE", inf.number, self.host, values=inf.values)
            if self.store.end_trial(self.spec.name, inf.trial_id, inf.token, entries, inf.fingerprint, done,
                                    result=True):
                self.store.wait_replicas()
                log.warning("trial %d: result recorded on the new writer", inf.number)
            return
        if mine is not None and mine.state != TrialState.RUNNING:
            return
        self.end_and_requeue(inf, "writer failover", trial_in_view=mine is not None)

    def _drop_heartbeats(self) -> None:
        b = self.backend
        if b is None or not b.my_worker_ids:
            return
        try:
            self.store.writer.delete(*[self.store.hb_key(w) for w in b.my_worker_ids])
        except Exception:  # noqa: BLE001 - best effort; the keys expire anyway
            pass
