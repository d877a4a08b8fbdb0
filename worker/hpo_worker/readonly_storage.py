"""A read-only Optuna storage over the store's fenced journals (for optuna-dashboard, the HTML report).

:class:`ReadOnlyStorage` is an ``optuna.storages.BaseStorage`` that serves every read of
every study in the store and refuses every write with :class:`ReadOnlyStorageError`:
only the workers write, through the fenced writer. Reads go where the workers' reads go:

- the master to read is chosen as by ``hpo-worker report`` (:class:`hpo_worker.reader.ReadOnlyStore`,
  the election's rules, nothing written): the writer the masters agree on. The choice is
  checked again when ``recheck`` seconds have passed since the last check, and at once when
  the master read from stops answering; when the writer record or endpoint changes (a
  failover) every journal is replayed again from the new writer's copy;
- each study's journal (``NS:journal:NAME``) is replayed by Optuna's own ``JournalStorage``,
  as in the workers, so trials, states, values, params and attrs are Optuna's replay. A
  journal that no longer holds, at the same place, the last entry replayed (it shrank or
  changed under the same writer) is replayed again from its first entry.

Ids: study ids count the studies in the order this object first saw them (the store's study
set, sorted by name, when first listed); a trial's id is ``study_id << 32 | its id in its
study's journal``. Both stay the same across a failover.

``get_all_trials`` deep-copies the trials when asked (Optuna's contract: the caller may modify
them); with ``copy_trials=False`` it hands out the replay's own trials (the HTML report, which
only reads them: Optuna's plots ask for deep copies several times a plot).

Which methods read is the explicit set :data:`READ_METHODS`; every other public method of
``BaseStorage`` is refused, so a write method a later Optuna adds is refused too (the class is
built from ``BaseStorage``'s own list of methods).
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Container, Iterator, Sequence
from typing import Any

from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from .election import parse_endpoints
from .journal import READ_CHUNK
from .reader import ReadOnlyStore
from .resp import ReplyError, Unreachable

TRIAL_ID_BITS = 32
_LOCAL_MASK = (1 << TRIAL_ID_BITS) - 1

# The methods of BaseStorage this storage serves; every other public one is refused.
READ_METHODS = frozenset({
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "get_all_studies", "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id", "get_trial_param", "get_trial", "get_all_trials", "get_n_trials",
    "get_best_trial", "get_trial_params", "get_trial_user_attrs", "get_trial_system_attrs",
    "remove_session", "check_trial_is_updatable",
})


class ReadOnlyStorageError(RuntimeError):
    """A write asked of the read-only storage."""


def refusal(method: str) -> str:
    return (f"{method}: refused: this Optuna storage is read-only (optuna-dashboard and the HTML report only"
            " read the studies); only the hpo-worker workers write to the store, through the fenced writer")


def storage_methods() -> list[str]:
    """The public methods of optuna's BaseStorage (the interface a consumer may call)."""
    return sorted(n for n in dir(BaseStorage) if not n.startswith("_") and callable(getattr(BaseStorage, n)))


def write_methods() -> list[str]:
    """The methods refused: every public method of BaseStorage that is not a read."""
    return [n for n in storage_methods() if n not in READ_METHODS]


class _JournalChanged(Exception):
    """The journal no longer holds the last entry replayed where it was read."""


class _ReadOnlyBackend(BaseJournalBackend):
    """One study's journal on the master read from: read in LRANGE chunks, never appended to."""

    def __init__(self, owner: ReadOnlyStorage, key: str) -> None:
        self.owner = owner
        self.key = key
        self.pos = 0       # entries read so far
        self.last = ""     # the last of them

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        client = self.owner._store.writer
        start = log_number_from
        raws: list[str] = []
        if start > 0:
            if start != self.pos:
                raise _JournalChanged(self.key)
            # one MULTI: the check and the first new entries are one view of the journal
            pipe = client.pipeline(transaction=True)
            pipe.lindex(self.key, start - 1)
            pipe.lrange(self.key, start, start + READ_CHUNK - 1)
            last, part = pipe.execute()
            if last != self.last:
                raise _JournalChanged(self.key)
        else:
            part = client.lrange(self.key, 0, READ_CHUNK - 1)
        while True:
            raws.extend(part)
            if len(part) < READ_CHUNK:
                break
            start += len(part)
            part = client.lrange(self.key, start, start + READ_CHUNK - 1)
        if raws:
            self.pos = log_number_from + len(raws)
            self.last = raws[-1]
        return iter([json.loads(r) for r in raws])  # decoded before Optuna applies any of them

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        raise ReadOnlyStorageError(refusal("append_logs"))


class _Journal:
    """One study's journal replayed by Optuna's JournalStorage."""

    def __init__(self, owner: ReadOnlyStorage, name: str) -> None:
        self.name = name
        self.storage = JournalStorage(_ReadOnlyBackend(owner, owner._store.journal_key(name)))

    def local_study_id(self) -> int:
        """The study's id in its journal (KeyError: the journal holds no study of that name yet)."""
        return self.storage.get_study_id_from_name(self.name)


class _ReadOnlyStorageReads(BaseStorage):
    """The reads of :class:`ReadOnlyStorage` (see the module); the writes are added below."""

    def __init__(self, store: ReadOnlyStore, recheck: float = 1.0, elect_wait: float = 10.0,
                 copy_trials: bool = True) -> None:
        self._store = store
        # False: get_all_trials(deepcopy=True) hands out the replay's own trials, as with deepcopy=False:
        # for a consumer that never modifies them (the HTML report: Optuna's plots ask for deep copies
        # of every trial several times a plot, 90% of the page's build time at 8,000 trials)
        self.copy_trials = copy_trials
        self.recheck = recheck
        self.elect_wait = elect_wait
        self._lock = threading.RLock()
        self._names: list[str] = []           # study id -> name
        self._ids: dict[str, int] = {}        # name -> study id
        self._journals: dict[int, _Journal] = {}
        self._source = ""                     # writer record and endpoint the journals were read from
        self._checked = float("-inf")
        with self._lock:
            self._elect(force=True)
            self._study_names()  # ids in name order for the studies there now

    # ------------------------------------------------------------ where to read
    @property
    def source(self) -> str:
        """The writer record and the endpoint read from (changes on a failover)."""
        return self._source

    def _elect(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.recheck:
            return
        self._store.elect(wait=self.elect_wait, promote=False)
        self._checked = time.monotonic()
        source = f"{self._store.record} {self._store.writer_endpoint_now()}"
        if source != self._source:
            self._journals.clear()  # another writer's copy: replay every journal from it
            self._source = source

    def _run(self, fn):
        """``fn()`` after the master check; again on a new election if the master stops answering,
        or with a fresh replay if a journal changed under us."""
        with self._lock:
            self._elect()
            for attempt in range(3):
                try:
                    return fn()
                except _JournalChanged as exc:
                    self._journals = {i: j for i, j in self._journals.items()
                                      if j.storage._backend.key != exc.args[0]}
                except (Unreachable, ReplyError):
                    if attempt == 2:
                        raise
                    self._elect(force=True)
            return fn()

    def _study_names(self) -> list[str]:
        names = sorted(self._store.writer.smembers(self._store.k_studies))
        for n in names:
            if n not in self._ids:
                self._ids[n] = len(self._names)
                self._names.append(n)
        return names

    def _journal(self, study_id: int) -> _Journal:
        if study_id >= len(self._names):
            self._study_names()  # a study added since the last listing
        if not 0 <= study_id < len(self._names):
            raise KeyError(f"no study with id {study_id}")
        j = self._journals.get(study_id)
        if j is None:
            j = self._journals[study_id] = _Journal(self, self._names[study_id])
        return j

    def _local(self, study_id: int) -> tuple[JournalStorage, int]:
        j = self._journal(study_id)
        return j.storage, j.local_study_id()

    def _global_trial(self, study_id: int, t: FrozenTrial) -> FrozenTrial:
        if study_id == 0:
            return t  # its ids are the journal's own
        t = copy.copy(t)
        t._trial_id = (study_id << TRIAL_ID_BITS) | t._trial_id
        return t

    # ------------------------------------------------------------ studies
    def get_all_studies(self) -> list[FrozenStudy]:
        def read() -> list[FrozenStudy]:
            out = []
            for name in self._study_names():
                sid = self._ids[name]
                storage = self._journal(sid).storage
                for fs in storage.get_all_studies():
                    if fs.study_name == name:
                        fs = copy.copy(fs)
                        fs._study_id = sid
                        out.append(fs)
            return out
        return self._run(read)

    def get_study_id_from_name(self, study_name: str) -> int:
        def read() -> int:
            if study_name not in self._ids and study_name not in self._study_names():
                raise KeyError(f"no study named {study_name!r} in the store")
            sid = self._ids[study_name]
            self._local(sid)  # KeyError when its journal holds no such study
            return sid
        return self._run(read)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._run(lambda: (self._local(study_id), self._names[study_id])[1])

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        def read():
            storage, local = self._local(study_id)
            return storage.get_study_directions(local)
        return self._run(read)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        def read():
            storage, local = self._local(study_id)
            return storage.get_study_user_attrs(local)
        return self._run(read)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        def read():
            storage, local = self._local(study_id)
            return storage.get_study_system_attrs(local)
        return self._run(read)

    # ------------------------------------------------------------ trials
    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        def read() -> int:
            storage, local = self._local(study_id)
            return (study_id << TRIAL_ID_BITS) | storage.get_trial_id_from_study_id_trial_number(local, trial_number)
        return self._run(read)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        study_id, local_tid = trial_id >> TRIAL_ID_BITS, trial_id & _LOCAL_MASK

        def read() -> FrozenTrial:
            storage, local = self._local(study_id)
            t = storage.get_trial(local_tid)
            if storage._replay_result._trial_id_to_study_id.get(local_tid) != local:
                raise KeyError(f"no trial with id {trial_id}")
            return self._global_trial(study_id, t)
        return self._run(read)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        def read() -> list[FrozenTrial]:
            storage, local = self._local(study_id)
            trials = storage.get_all_trials(local, deepcopy=deepcopy and self.copy_trials, states=states)
            return [self._global_trial(study_id, t) for t in trials]
        return self._run(read)


def _refuser(name: str):
    def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise ReadOnlyStorageError(refusal(name))
    refuse.__name__ = refuse.__qualname__ = name
    refuse.__doc__ = f"Refused: the storage is read-only (:class:`ReadOnlyStorageError`). ({name})"
    return refuse


# Every public BaseStorage method that is not a read is a refusal (see the module).
ReadOnlyStorage = type("ReadOnlyStorage", (_ReadOnlyStorageReads,), {
    "__module__": __name__,
    "__doc__": "Optuna storage over every study in the store: reads only (see :mod:`hpo_worker.readonly_storage`).",
    **{name: _refuser(name) for name in write_methods()},
})


def read_only_storage(endpoints: str | Sequence[str], password: str | None = None, namespace: str = "hpo",
                      username: str | None = None, recheck: float = 1.0, elect_wait: float = 10.0,
                      copy_trials: bool = True) -> ReadOnlyStorage:
    """The read-only storage of the store at ``endpoints`` ('host:port,...' or a list, every master in
    inventory order), e.g. ``optuna.load_study(study_name=NAME, storage=read_only_storage(...))`` or
    optuna-dashboard's ``run_server(storage)``. Raises :class:`hpo_worker.election.NoWriter` when no
    master answers within ``elect_wait`` seconds. ``copy_trials=False``: no deep copies of trials
    (for a consumer that never modifies what it reads)."""
    eps = parse_endpoints(endpoints if isinstance(endpoints, str) else ",".join(endpoints))
    return ReadOnlyStorage(ReadOnlyStore(eps, password=password, namespace=namespace, username=username),
                           recheck=recheck, elect_wait=elect_wait, copy_trials=copy_trials)
