"""Optuna's journal as hpo-worker reads and writes it: op codes, entries, one replay.

The journal of a study is a list of JSON entries in Optuna's own format
(``optuna.storages.journal.JournalOperation``). Optuna writes most of them;
the worker writes a few by hand (inside the fenced ``end`` script, atomically
with a claim change): FAIL or COMPLETE a trial, requeue params as a WAITING
trial, add a COMPLETE trial recorded after a failover. Those builders are here.

:class:`Replay` is the one replay of a journal outside Optuna: the storage
backend feeds it the entries it hands to Optuna (to know which worker id runs
each RUNNING trial, for the reaper), ``report`` and ``trials`` feed it raw
entries and it parses only the ones they need. This module imports neither
Optuna nor Redis, so the read-only commands start fast.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

# optuna.storages.journal.JournalOperation
CREATE_STUDY = 0
DELETE_STUDY = 1
SET_STUDY_USER_ATTR = 2
SET_STUDY_SYSTEM_ATTR = 3
CREATE_TRIAL = 4
SET_TRIAL_PARAM = 5
SET_TRIAL_STATE_VALUES = 6
SET_TRIAL_INTERMEDIATE_VALUE = 7
SET_TRIAL_USER_ATTR = 8
SET_TRIAL_SYSTEM_ATTR = 9

# optuna.trial.TrialState
RUNNING, COMPLETE, PRUNED, FAIL, WAITING = 0, 1, 2, 3, 4
STATE_NAMES = ("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING")
FINISHED = (COMPLETE, PRUNED, FAIL)

READ_CHUNK = 20_000  # journal entries per LRANGE

REAPER_WORKER_ID = "hpo-worker-reaper"  # never the id of a live JournalStorage


def now_iso() -> str:
    return datetime.now(tz=timezone.utc).isoformat(timespec="microseconds")


# ---------------------------------------------------------------- entries written by hand
def fail_entry(trial_id: int) -> str:
    return json.dumps({"op_code": SET_TRIAL_STATE_VALUES, "worker_id": REAPER_WORKER_ID, "trial_id": trial_id,
                       "state": FAIL, "values": None, "datetime_complete": now_iso()})


def complete_entry(trial_id: int, values: list[float]) -> str:
    return json.dumps({"op_code": SET_TRIAL_STATE_VALUES, "worker_id": REAPER_WORKER_ID, "trial_id": trial_id,
                       "state": COMPLETE, "values": values, "datetime_complete": now_iso()})


def requeue_entry(study_id: int, params: dict[str, Any], requeued_from: int, reason: str) -> str:
    """A WAITING trial with fixed params (what Study.enqueue_trial writes), saying which trial it replaces."""
    user_attrs = {"hpo_requeued_from": requeued_from, "hpo_reason": reason}
    return json.dumps({"op_code": CREATE_TRIAL, "worker_id": REAPER_WORKER_ID, "study_id": study_id,
                       "datetime_start": None, "state": WAITING, "value": None,
                       "values": None, "distributions": {}, "params": {}, "user_attrs": user_attrs,
                       "system_attrs": {"fixed_params": params}, "intermediate_values": {}})


def added_complete_entry(study_id: int, started: float, values: list[float], distributions: dict[str, str],
                         params_internal: dict[str, Any], hpo: dict[str, Any]) -> str:
    """A COMPLETE trial created whole (a result recorded on a new writer whose journal lacks its trial)."""
    return json.dumps({
        "op_code": CREATE_TRIAL, "worker_id": REAPER_WORKER_ID, "study_id": study_id,
        "datetime_start": datetime.fromtimestamp(started, tz=timezone.utc).isoformat(timespec="microseconds"),
        "datetime_complete": now_iso(), "state": COMPLETE,
        "value": None if len(values) > 1 else values[0],
        "values": values if len(values) > 1 else None,
        "distributions": distributions, "params": params_internal,
        "user_attrs": {"hpo": hpo}, "system_attrs": {}, "intermediate_values": {}})


# ---------------------------------------------------------------- the replay
def op_code(raw: str) -> int:
    # json.dumps of Optuna's entries starts with {"op_code": N (N < 10: one digit)
    if raw.startswith('{"op_code": ') and raw[13] == ",":
        return ord(raw[12]) - 48
    return int(json.loads(raw)["op_code"])


# The shapes Optuna's workers write most (json.dumps of its dicts, in its key order), matched
# with one regex instead of json.loads; any other shape is decoded in full.
_S = r'"(?:[^"\\]|\\.)*"'  # a JSON string
_CREATE_TRIAL_RE = re.compile(r'\{"op_code": 4, "worker_id": (' + _S + r'), "study_id": (\d+), '
                              r'"datetime_start": "([^"\\]*)"\}')
_STATE_RE = re.compile(r'\{"op_code": 6, "worker_id": (' + _S + r'), "trial_id": (\d+), "state": (\d), '
                       r'"values": (null|\[[^\]"]*\])(?:, "datetime_(start|complete)": "([^"\\]*)")?\}')
_USER_ATTR_RE = re.compile(r'\{"op_code": 8, "worker_id": ' + _S + r', "trial_id": (\d+), "user_attr": \{"(hpo)?')


# The hpo user attr as a worker first sets it (before any extra key is added)
_HPO_RE = re.compile(r'\{"host": "([^"\\]*)", "pid": (\d+), "token": "([^"\\]*)"\}')

_OP_PREFIX = {f'{{"op_code": {n},': n for n in range(10)}


def _string(quoted: str) -> str:
    return quoted[1:-1] if "\\" not in quoted else json.loads(quoted)


def _external(distribution: Any, internal: Any) -> Any:
    """Optuna's to_external_repr without importing Optuna: categorical index -> choice, ints."""
    d = json.loads(distribution) if isinstance(distribution, str) else distribution
    name = d.get("name", "")
    if name == "CategoricalDistribution":
        return d["attributes"]["choices"][int(internal)]
    if name in ("IntDistribution", "IntUniformDistribution", "IntLogUniformDistribution"):
        return int(internal)
    return float(internal)


class Trial:
    """What the replay keeps of one trial (params only when asked for)."""

    __slots__ = ("trial_id", "number", "study", "state", "start", "complete", "hpo", "values", "params",
                 "requeued_from", "requeue_reason")

    def __init__(self, trial_id: int, number: int, study: int, state: int, start: str | None,
                 complete: str | None) -> None:
        self.trial_id = trial_id
        self.number = number
        self.study = study
        self.state = state
        self.start = start
        self.complete = complete
        self.hpo: dict[str, Any] | None = None
        self.values: list[float] | None = None
        self.params: dict[str, Any] | None = None
        self.requeued_from: int | None = None  # a requeue (requeue_entry): the trial it replaces, and why
        self.requeue_reason: str | None = None


# A trial retired from a replay (Replay.retire): finished, so no entry changes it again;
# the replay rules skip it as they skip every finished trial.
RETIRED = Trial(-1, -1, -1, COMPLETE, None, None)
_TRIAL_FIELDS = Trial.__slots__


class Replay:
    """Replays journal entries the way Optuna's JournalStorage does, keeping only what
    hpo-worker needs: study names, per trial its state, start/complete times, the
    ``hpo`` user attr, values (and params with ``params=True``), and which worker id
    runs each trial (``owner``: the first worker that set it RUNNING, as the reaper needs).

    ``feed(raw)`` takes raw JSON and parses only the entries that matter;
    ``apply(entry)`` takes an entry already decoded (the storage backend's case).
    """

    def __init__(self, params: bool = False, values: bool = False) -> None:
        self.study_names: list[str] = []
        self._study_ids: dict[str, int] = {}
        self.trials: list[Trial] = []
        self._per_study: list[int] = []   # trials per study (trial numbers)
        self.owner: dict[int, str] = {}   # trial id -> worker id that runs (or ran) it
        self.want_params = params
        self.want_values = values or params
        skip = {DELETE_STUDY, SET_STUDY_USER_ATTR, SET_STUDY_SYSTEM_ATTR, SET_TRIAL_INTERMEDIATE_VALUE,
                SET_TRIAL_SYSTEM_ATTR}
        if not params:
            skip.add(SET_TRIAL_PARAM)
        self._skip = frozenset(skip)

    def feed(self, raws: Iterable[str]) -> Replay:
        """Replay raw entries; the common shapes of trial creation, state change and user
        attr are matched without decoding the whole entry (json.loads is the slow part).
        Same rules as :meth:`apply`, written out inline: this loop is the report's hot path."""
        loads, skip, apply, ops = json.loads, self._skip, self.apply, _OP_PREFIX
        create_re, state_re, attr_re = _CREATE_TRIAL_RE.fullmatch, _STATE_RE.fullmatch, _USER_ATTR_RE.match
        hpo_re = _HPO_RE.fullmatch
        trials, owner, want_values = self.trials, self.owner, self.want_values
        per_study, study_names, new_trial = self._per_study, self.study_names, trials.append
        for raw in raws:
            op = ops.get(raw[:14])
            if op is None:
                op = op_code(raw)
            if op in skip:
                continue
            if op == SET_TRIAL_STATE_VALUES:
                m = state_re(raw)
                if m is not None:
                    wid, tid, st, vals, which, when = m.groups()
                    tid = int(tid)
                    if st == "0":
                        if tid not in owner:
                            owner[tid] = wid[1:-1] if "\\" not in wid else loads(wid)
                        if tid >= len(trials):
                            continue
                        t = trials[tid]
                        if t.state != WAITING:
                            continue  # finished trials are not updatable; a popped trial taken by another first
                        t.start = when if which == "start" else None
                        t.state = RUNNING
                    else:
                        if tid >= len(trials):
                            continue
                        t = trials[tid]
                        if t.state != RUNNING and t.state != WAITING:
                            continue  # finished trials are not updatable
                        st = int(st)
                        if st in FINISHED:
                            t.complete = when if which == "complete" else None
                        t.state = st
                    if want_values and vals != "null":
                        t.values = loads(vals)
                    continue
            elif op == CREATE_TRIAL:
                m = create_re(raw)
                if m is not None:
                    wid, sid, start = m.groups()
                    sid = int(sid)
                    if sid < len(study_names):
                        tid = len(trials)
                        new_trial(Trial(tid, per_study[sid], sid, RUNNING, start, None))
                        per_study[sid] += 1
                        owner[tid] = wid[1:-1] if "\\" not in wid else loads(wid)
                    continue
            elif op == SET_TRIAL_USER_ATTR:
                m = attr_re(raw)
                if m is not None:
                    if m.group(2) is None:
                        continue  # another user attr than hpo: nothing to keep
                    tid = int(m.group(1))
                    if raw.endswith("}}}") and tid < len(trials):
                        t = trials[tid]
                        if t.state == RUNNING or t.state == WAITING:
                            h = raw[m.end() + 3:-2]  # the value of "hpo" alone
                            hm = hpo_re(h)
                            if hm is not None:
                                t.hpo = {"host": hm[1], "pid": int(hm[2]), "token": hm[3]}
                            else:
                                h = loads(h)
                                if isinstance(h, dict):
                                    t.hpo = h
                        continue
            apply(loads(raw))
        return self

    def _new_trial(self, sid: int, state: int, start: str | None, complete: str | None,
                   worker_id: str) -> Trial | None:
        if sid >= len(self.study_names):
            return None
        tid = len(self.trials)
        t = Trial(tid, self._per_study[sid], sid, state, start, complete)
        self._per_study[sid] += 1
        self.trials.append(t)
        if state == RUNNING:
            self.owner[tid] = worker_id
        return t

    def apply(self, e: dict[str, Any]) -> None:
        op = e.get("op_code")  # anything else (not a journal entry) is ignored
        if op == CREATE_STUDY:
            name = e["study_name"]
            if name not in self._study_ids:
                self._study_ids[name] = len(self.study_names)
                self.study_names.append(name)
                self._per_study.append(0)
        elif op == CREATE_TRIAL:
            state = e.get("state", RUNNING)
            t = self._new_trial(e["study_id"], state, e.get("datetime_start"), e.get("datetime_complete"),
                                e.get("worker_id", ""))
            if t is None:
                return
            attrs = e.get("user_attrs") or {}
            h = attrs.get("hpo")
            if isinstance(h, dict):
                t.hpo = h
            if "hpo_requeued_from" in attrs:
                t.requeued_from, t.requeue_reason = attrs["hpo_requeued_from"], attrs.get("hpo_reason")
            if self.want_values:
                v = e.get("values")
                t.values = v if v is not None else ([e["value"]] if e.get("value") is not None else None)
            if self.want_params:
                dists = e.get("distributions") or {}
                p = {k: _external(dists[k], v) for k, v in (e.get("params") or {}).items() if k in dists}
                fixed = (e.get("system_attrs") or {}).get("fixed_params")
                if not p and isinstance(fixed, dict) and state == WAITING:
                    p = dict(fixed)
                t.params = p
        elif op == SET_TRIAL_STATE_VALUES:
            tid = e["trial_id"]
            st = e["state"]
            if st == RUNNING:
                self.owner.setdefault(tid, e["worker_id"])
            if tid >= len(self.trials):
                return
            t = self.trials[tid]
            if t.state in FINISHED:
                return  # finished trials are not updatable (as in Optuna's replay)
            if st == RUNNING:
                if t.state == RUNNING:
                    return  # popped by another worker first
                t.start = e.get("datetime_start")
            elif st in FINISHED:
                t.complete = e.get("datetime_complete")
            t.state = st
            if self.want_values and e.get("values") is not None:
                t.values = e["values"]
        elif op == SET_TRIAL_USER_ATTR:
            tid = e["trial_id"]
            if tid < len(self.trials) and self.trials[tid].state not in FINISHED:
                h = e["user_attr"].get("hpo")
                if isinstance(h, dict):
                    self.trials[tid].hpo = h
        elif op == SET_TRIAL_PARAM and self.want_params:
            tid = e["trial_id"]
            if tid < len(self.trials) and self.trials[tid].state not in FINISHED:
                t = self.trials[tid]
                if t.params is None:
                    t.params = {}
                t.params[e["param_name"]] = _external(e["distribution"], e["param_value_internal"])

    def study_id(self, name: str) -> int | None:
        return self._study_ids.get(name)

    # ------------------------------------------------------------ resuming a replay (the report's cache)
    def retire(self, fold: Callable[[Trial], None]) -> None:
        """Hand each finished trial to ``fold`` once and keep only :data:`RETIRED` in its place:
        finished trials are not updatable, so what ``fold`` saw is final."""
        trials = self.trials
        for i, t in enumerate(trials):
            if t is not RETIRED and t.state in FINISHED:
                fold(t)
                trials[i] = RETIRED

    def snapshot(self) -> dict[str, Any]:
        """The replay as JSON-able data, to go on from later with :meth:`restore`. Of the
        owners only those of trials not retired are kept (the ones a reaper could need)."""
        open_trials = [[getattr(t, f) for f in _TRIAL_FIELDS] for t in self.trials if t is not RETIRED]
        return {"fields": list(_TRIAL_FIELDS), "params": self.want_params, "values": self.want_values,
                "study_names": self.study_names, "per_study": self._per_study, "n_trials": len(self.trials),
                "open": open_trials,
                "owner": [[row[0], self.owner[row[0]]] for row in open_trials if row[0] in self.owner]}

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> Replay:
        """A replay in the state :meth:`snapshot` saw (its retired trials stay retired)."""
        if snap["fields"] != list(_TRIAL_FIELDS):
            raise ValueError("replay snapshot of another Trial layout")
        r = cls(params=snap["params"], values=snap["values"])
        for name in snap["study_names"]:
            r._study_ids[name] = len(r.study_names)
            r.study_names.append(name)
        r._per_study = [int(n) for n in snap["per_study"]]
        if len(r._per_study) != len(r.study_names):
            raise ValueError("replay snapshot: per-study counts do not match its studies")
        r.trials = [RETIRED] * int(snap["n_trials"])
        for row in snap["open"]:
            t = Trial.__new__(Trial)
            for f, v in zip(_TRIAL_FIELDS, row):
                setattr(t, f, v)
            r.trials[t.trial_id] = t
        r.owner.update((int(tid), wid) for tid, wid in snap["owner"])
        return r


def iter_journal(client: Any, key: str, chunk: int = READ_CHUNK) -> Iterable[str]:
    """Every raw entry of a journal, read with LRANGE in chunks (``client``: a redis-py client
    or :class:`hpo_worker.resp.Client`). (Measured: a Lua script joining a chunk into one
    reply is slower than LRANGE, 0.25 s vs 0.09 s for 48,000 entries.)"""
    start = 0
    while True:
        part = client.lrange(key, start, start + chunk - 1)
        yield from part
        if len(part) < chunk:
            return
        start += len(part)
