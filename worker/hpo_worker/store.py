"""One fenced writer on a group of KeyDB masters (or a Redis primary + replicas).

Keys (``NS`` defaults to ``hpo``), all on the writer master:

- ``NS:writer``        "EPOCH HOST:PORT": who the writer is, and since which epoch.
- ``NS:journal:STUDY`` a list, one JSON Optuna journal entry per element; one
                       journal per study, so a worker replays only its own study.
- ``NS:studies``       the set of study names that have a journal.
- ``NS:hb:WORKER_ID``  heartbeat of one Optuna worker id, with a TTL.
- ``NS:claims:STUDY``  hash: params fingerprint -> JSON claim (RUNNING/COMPLETE).
- ``NS:ended:...``     one-shot markers so a trial is ended by one party only (kept 14 days).
- ``NS:seq``           how many journal entries this group ever appended (all studies): a
                       master's progress, compared when choosing whom to promote.

Every write is a Lua script that first checks ``NS:writer`` equals the record the
caller was elected under, and every journal write also checks that the journal
still holds what the caller last read of it (its length and last entry); if
not, the script writes nothing and answers ``HPOFENCED``. The writer is the
master that holds the highest-epoch record naming itself, when no reachable
master holds a different record at that epoch. When it fails (or records
conflict), workers promote one master with a compare-and-set on its writer key
(``REPLICAOF NO ONE`` first if it is a Redis replica); every worker picks the
same one whatever its endpoint order: masters first, the most journal entries
(``NS:seq``), then the endpoint's text.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .election import (  # noqa: F401 - some only re-exported: this module's API too
    AUTH_HINT,
    CONNECT_TIMEOUT,
    PROBE_TIMEOUT,
    SOCKET_TIMEOUT,
    NoWriter,
    Probe,
    StoreAuthError,
    candidates,
    parse_endpoints,
    parse_record,
    read_only_choice,
    role_kind,
    writer_of,
)
from .journal import READ_CHUNK, iter_journal  # noqa: F401 - iter_journal: part of this module's API

log = logging.getLogger("hpo_worker.store")

# How much later than another worker a worker may adopt a new writer after a failover
# (it notices the failure up to one socket timeout later, and its election may wait on
# two probes of the master that went away): reaping waits this long on top of the TTL.
FAILOVER_SPREAD = SOCKET_TIMEOUT + 2 * PROBE_TIMEOUT + 1.0
# A replica whose last acknowledgement is older than this (seconds, INFO's lag) is not
# waited for: a powered-off standby stays "connected" until the master's repl-timeout.
REPLICA_LAG_MAX = 3

# ---------------------------------------------------------------- Lua scripts
_CHECK = """
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then
  return redis.error_reply('HPOFENCED writer is ' .. tostring(cur) .. ', not ' .. ARGV[1])
end
"""

# Journal guard: ARGV[2] = entries the caller has read, ARGV[3] = the last of them.
# A journal that shrank or changed under the caller (a stale master resynced into
# it, a promoted standby that missed entries) is refused: nothing is written onto
# trial ids the caller would misread.
_GUARD = """
local seen = tonumber(ARGV[2])
if seen > 0 then
  local n = redis.call('LLEN', KEYS[2])
  if n < seen or redis.call('LINDEX', KEYS[2], seen - 1) ~= ARGV[3] then
    return redis.error_reply('HPOFENCED journal ' .. KEYS[2] .. ' holds ' .. n ..
      ' entries, not the ' .. seen .. ' this worker read (shrank or changed)')
  end
end
"""

# KEYS: writer, journal, hb, studies, seq
# ARGV: expected, seen, last, hb_ttl_ms, read_from, study, log...
# Returns {length, entries since read_from...} so the caller needs no second round trip
# to read back what it (and others, meanwhile) appended; only the length if that backlog is long.
APPEND = _CHECK + _GUARD + """
for i = 7, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('INCRBY', KEYS[5], #ARGV - 6)
if ARGV[4] ~= '0' then redis.call('SET', KEYS[3], '1', 'PX', ARGV[4]) end
redis.call('SADD', KEYS[4], ARGV[6])
local n = redis.call('LLEN', KEYS[2])
local from = tonumber(ARGV[5])
if from < 0 or n - from > 256 then return {n} end
local out = redis.call('LRANGE', KEYS[2], from, -1)
table.insert(out, 1, n)
return out
"""

# KEYS: writer, hb...   ARGV: expected, ttl_ms
HEARTBEAT = _CHECK + """
for i = 2, #KEYS do redis.call('SET', KEYS[i], '1', 'PX', ARGV[2]) end
return #KEYS - 1
"""

# KEYS: writer, claims   ARGV: expected, fingerprint, claim
CLAIM = _CHECK + """
local cur = redis.call('HGET', KEYS[2], ARGV[2])
if cur then return cur end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return false
"""

# KEYS: writer, claims   ARGV: expected, fingerprint, owner_token, new_claim ('' = delete)
# Replaces (or deletes) a claim only while it is still the caller's.
UPDATE_CLAIM = _CHECK + """
local cur = redis.call('HGET', KEYS[2], ARGV[2])
if cur then
  local ok, decoded = pcall(cjson.decode, cur)
  if not ok or decoded['owner'] ~= ARGV[3] then return 0 end
end
if ARGV[4] == '' then redis.call('HDEL', KEYS[2], ARGV[2])
else redis.call('HSET', KEYS[2], ARGV[2], ARGV[4]) end
return 1
"""

# End a trial once: KEYS: writer, journal, claims, ended_marker, hb_must_be_absent ('' = no check), seq
# ARGV: expected, seen, last, fingerprint ('' = none), owner_token, new_claim ('' = delete), log...
END_TRIAL = _CHECK + _GUARD + """
if KEYS[5] ~= '' and redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', 1209600) then return 0 end
if ARGV[4] ~= '' then
  local cur = redis.call('HGET', KEYS[3], ARGV[4])
  local mine = true
  if cur then
    local ok, decoded = pcall(cjson.decode, cur)
    mine = ok and decoded['owner'] == ARGV[5]
  end
  if mine then
    if ARGV[6] == '' then redis.call('HDEL', KEYS[3], ARGV[4])
    else redis.call('HSET', KEYS[3], ARGV[4], ARGV[6]) end
  end
end
for i = 7, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('INCRBY', KEYS[6], #ARGV - 6)
return 1
"""

# Promote: KEYS: writer   ARGV: observed ('' = missing), new
PROMOTE = """
local cur = redis.call('GET', KEYS[1])
if (cur or '') ~= ARGV[1] then return cur end
redis.call('SET', KEYS[1], ARGV[2])
return ARGV[2]
"""

# Fence a stale master: raise its writer record to ours if its epoch is lower.
# KEYS: writer  ARGV: new, new_epoch
FENCE_STALE = """
local cur = redis.call('GET', KEYS[1])
local epoch = -1
if cur then epoch = tonumber(string.match(cur, '^(%d+) ')) or -1 end
if epoch < tonumber(ARGV[2]) then redis.call('SET', KEYS[1], ARGV[1]) return 1 end
return 0
"""


class Fenced(RuntimeError):
    """The master refused a write: it is no longer (or not yet) the writer we were told."""


WriterLost = (redis.ConnectionError, redis.TimeoutError, Fenced, redis.ReadOnlyError)


def claim_json(owner: str, state: str, trial: int, host: str, **extra: Any) -> str:
    """A claim (the value of one fingerprint in NS:claims:STUDY): who owns the params
    (``owner``: the claiming trial's token, JOURNAL_WORKER_ID/TRIAL_ID), RUNNING,
    COMPLETE (with ``values``) or FAILED (with ``attempts``), the trial number and host."""
    return json.dumps({"owner": owner, "state": state, "trial": trial, "host": host, **extra})


def live_replicas(info: dict[str, Any]) -> int:
    """Replicas worth a WAIT, from INFO replication: online, and heard from within
    REPLICA_LAG_MAX seconds (redis-py parses each ``slaveN`` line into a dict)."""
    n = 0
    for i in range(int(info.get("connected_slaves", 0))):
        replica = info.get(f"slave{i}")
        if isinstance(replica, dict):
            if replica.get("state") == "online" and int(replica.get("lag", 0)) <= REPLICA_LAG_MAX:
                n += 1
        else:  # a reply shape we do not know: count it, as connected_slaves does
            n += 1
    return n


def _map_error(exc: redis.ResponseError) -> Exception:
    if str(exc).startswith("HPOFENCED"):
        return Fenced(str(exc))
    return exc


class Store:
    """The current writer of a master group, its election and the fenced scripts.

    Thread-safe: the heartbeat thread and the main thread share one Store.
    """

    def __init__(self, endpoints: list[str], password: str | None = None, namespace: str = "hpo",
                 username: str | None = None) -> None:
        self.endpoints = list(endpoints)
        self.password = password
        self.username = username  # an ACL user (docs/security.md); None: the default user
        self.ns = namespace
        self._lock = threading.RLock()  # held by elections only; fenced calls never wait on it
        self._clients: dict[str, redis.Redis] = {}
        self._probe_clients: dict[str, redis.Redis] = {}
        self.record: str = ""  # "EPOCH HOST:PORT" we write under
        self.writer: redis.Redis | None = None
        self.generation = 0  # bumps on every change of writer
        self.replicas = 0
        self.adopted_at = 0.0  # time.monotonic() of the last change of writer
        self.failover_at = 0.0  # ... of the last change from one writer to another
        self._state: tuple[str, dict[str, Any]] = ("", {})
        # journal key -> (entries read, the last of them): every journal write checks it
        self.journal_pos: dict[str, tuple[int, str]] = {}
        self.k_writer = f"{namespace}:writer"
        self.k_studies = f"{namespace}:studies"
        self.k_seq = f"{namespace}:seq"

    # ------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        """Picklable (a JournalStorage on this store can go to a process pool): the lock and
        the connections stay behind; the copy reconnects to the same writer on first use."""
        state = dict(self.__dict__)
        state.update(_lock=None, _clients={}, _probe_clients={}, writer=None, _state=(self.record, {}))
        state["_writer_endpoint"] = self.writer_endpoint_now()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        endpoint = state.pop("_writer_endpoint", "")
        self.__dict__.update(state)
        self._lock = threading.RLock()
        if endpoint:
            self._connect(endpoint)

    def writer_endpoint_now(self) -> str:
        """host:port of the master we read and write (also when it holds no writer record)."""
        if self.writer is None:
            return ""
        kw = self.writer.connection_pool.connection_kwargs
        return f"{kw['host']}:{kw['port']}"

    # ------------------------------------------------------------ connections
    def client(self, endpoint: str) -> redis.Redis:
        return self._client(self._clients, endpoint, SOCKET_TIMEOUT)

    def _client(self, pool: dict[str, redis.Redis], endpoint: str, timeout: float) -> redis.Redis:
        c = pool.get(endpoint)
        if c is None:
            host, _, port = endpoint.rpartition(":")
            c = redis.Redis(host=host, port=int(port), username=self.username, password=self.password,
                            decode_responses=True,
                            socket_connect_timeout=min(CONNECT_TIMEOUT, timeout), socket_timeout=timeout,
                            health_check_interval=0, retry=Retry(NoBackoff(), 0))
            pool[endpoint] = c
        return c

    def close(self) -> None:
        for c in [*self._clients.values(), *self._probe_clients.values()]:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing best effort
                pass

    def _probe(self, endpoint: str) -> Probe | None:
        """What a master says (record, role, progress), or None when unreachable."""
        try:
            c = self._client(self._probe_clients, endpoint, PROBE_TIMEOUT)
            pipe = c.pipeline(transaction=False)
            pipe.get(self.k_writer)
            pipe.execute_command("ROLE")
            pipe.get(self.k_seq)
            return Probe.of(endpoint, *pipe.execute())
        except redis.AuthenticationError as exc:
            raise StoreAuthError(f"{endpoint} refused the user or password ({AUTH_HINT}): {exc}") from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise StoreAuthError(f"{endpoint} refused the user or password ({AUTH_HINT}): {exc}") from None
            log.warning("endpoint %s unreachable: %r", endpoint, exc)
            return None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("endpoint %s unreachable: %r", endpoint, exc)
            return None

    def _probe_all(self, endpoints: list[str] | None = None) -> dict[str, Probe]:
        """What every master (or those given) says, asked in parallel: a master that does
        not answer costs one PROBE_TIMEOUT, not one per master."""
        endpoints = self.endpoints if endpoints is None else endpoints
        for ep in endpoints:  # the clients are made here, in one thread, before the pool asks
            self._client(self._probe_clients, ep, PROBE_TIMEOUT)
        if len(endpoints) <= 1:
            probes = [self._probe(ep) for ep in endpoints]
        else:
            with ThreadPoolExecutor(max_workers=len(endpoints), thread_name_prefix="probe") as pool:
                probes = list(pool.map(self._probe, endpoints))
        return {ep: p for ep, p in zip(endpoints, probes) if p is not None}

    # ------------------------------------------------------------ election
    def elect(self, failed: str | None = None, wait: float = 60.0, stop: threading.Event | None = None,
              promote: bool = True) -> str:
        """Find (or, with ``promote``, make) the writer. ``failed``: an endpoint just seen failing.

        Returns the writer record. Waits up to ``wait`` seconds for some master.
        With ``promote=False`` nothing is written: when the group has no writer
        record, the master a promotion would pick is read (the record stays '').
        """
        deadline = time.monotonic() + wait
        delay = 0.2
        generation = self.generation
        while True:
            with self._lock:
                if self.generation != generation and self.writer is not None and (self.record or not promote):
                    # another thread of this process elected while we waited for the lock
                    return self.record
                reachable = self._probe_all()
                if promote:
                    rec = self._elect_once(reachable)
                else:
                    rec = self._read_only(reachable)
                if rec is not None:
                    return rec
            if stop is not None and stop.is_set():
                raise NoWriter("stopping while no master of the group is reachable")
            if time.monotonic() > deadline:
                if reachable:
                    raise NoWriter(f"no writer could be elected among {', '.join(self.endpoints)}: the"
                                   f" masters that answer ({', '.join(reachable)}) hold epoch"
                                   f" {max(p.epoch for p in reachable.values())}, older than the epoch"
                                   f" {self.epoch} this worker followed (stale data: see worker/README.md)")
                raise NoWriter(f"no master reachable among {', '.join(self.endpoints)}")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _elect_once(self, reachable: dict[str, Probe]) -> str | None:
        if not reachable:
            return None
        best = max(p.epoch for p in reachable.values())
        top_records = {p.record for p in reachable.values() if p.epoch == best and p.record}
        named = parse_record(next(iter(top_records)))[1] if len(top_records) == 1 else ""
        found = writer_of(reachable)
        if found is None and named in reachable:
            # The record names a master that answered without holding it. Each master was
            # asked at its own moment: it may have been promoted just after we asked it. Ask
            # again; if it still does not hold it, the records were crossed by replication.
            time.sleep(0.2)
            again = self._probe(named)
            if again is not None:
                reachable[named] = again
                found = writer_of(reachable)
        if found is not None:
            ep, rec = found
            self._adopt(ep, rec)
            for other in reachable.values():
                if other.epoch < self.epoch and other.role == "master":
                    self._fence(other.endpoint, other.record)
            return rec
        if 0 <= best < self.epoch:
            # Every master that answers is behind the epoch this worker followed: they
            # returned with old data. Never promote one; wait for an up-to-date master.
            log.warning("masters %s hold epoch %d < %d: stale, not promoted",
                        ", ".join(reachable), best, self.epoch)
            return None
        if not named and best < 0 and self.record:
            named = self.writer_endpoint  # we followed a writer whose record never replicated
        if named and named not in reachable:
            time.sleep(0.3)  # one more look before declaring the writer dead
            if self._probe(named) is not None:
                return None
        # The named writer is down, records conflict, or nothing is set up yet: promote.
        # A replica only when a writer existed before (a fresh group starts on a master).
        for cand in candidates(reachable, replicas_too=bool(named) or best >= 0):
            new = f"{max(best, self.epoch, 0) + 1} {cand.endpoint}"
            c = self.client(cand.endpoint)
            try:
                if cand.role != "master":
                    log.warning("promoting replica %s to master (REPLICAOF NO ONE)", cand.endpoint)
                    c.execute_command("REPLICAOF", "NO", "ONE")
                got = c.eval(PROMOTE, 1, self.k_writer, cand.record or "", new)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                log.warning("could not promote %s: %s", cand.endpoint, exc)
                continue
            if got == new:
                log.warning("%s is the writer now (epoch %s, was %r)", cand.endpoint, new.split()[0],
                            cand.record)  # logged by every worker of a race: they all set the same record
            # someone else may have won the race: adopt whatever the masters agree on now
            # (asking again only those that answered: one that did not would cost a timeout)
            found = writer_of(self._probe_all(list(reachable)))
            if found is not None:
                self._adopt(*found)
                return found[1]
            return None
        return None

    def _read_only(self, reachable: dict[str, Probe]) -> str | None:
        """The writer if there is one, else the master a promotion would pick; no write."""
        found = read_only_choice(reachable)
        if found is None:
            return None
        self._adopt(*found)
        return found[1]

    def _adopt(self, endpoint: str, rec: str) -> None:
        if rec != self.record or self.writer is None:
            self.record = rec
            self._connect(endpoint)
            self.adopted_at = time.monotonic()
            if self.generation > 0:
                self.failover_at = self.adopted_at
            self.generation += 1
            log.info("writer: %s (replicas connected: %d)", rec or f"{endpoint} (read only)", self.replicas)

    def _connect(self, endpoint: str) -> None:
        """Client and scripts for the writer at ``endpoint`` under ``self.record`` (connects lazily)."""
        writer = self.client(endpoint)
        scripts = {name: writer.register_script(src) for name, src in
                   (("append", APPEND), ("hb", HEARTBEAT), ("claim", CLAIM),
                    ("update_claim", UPDATE_CLAIM), ("end", END_TRIAL))}
        try:
            self.replicas = live_replicas(writer.info("replication"))
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            self.replicas = 0
        self.writer = writer
        self._state = (self.record, scripts)

    @property
    def writer_endpoint(self) -> str:
        return parse_record(self.record)[1]

    @property
    def epoch(self) -> int:
        return parse_record(self.record)[0]

    def fence_stale_masters(self) -> str | None:
        """Look at every master; raise stale writer records; return a newer record if one exists."""
        newer = None
        my_epoch = self.epoch
        for p in self._probe_all().values():
            if p.epoch > my_epoch and p.named == p.endpoint and p.role == "master":
                newer = p.record
            elif p.epoch < my_epoch and p.role == "master" and p.endpoint != self.writer_endpoint:
                self._fence(p.endpoint, p.record)
        return newer

    def _fence(self, ep: str, rec: str | None) -> None:
        """Write our (higher) writer record onto a stale master, so writes aimed at it fail."""
        try:
            if self.client(ep).eval(FENCE_STALE, 1, self.k_writer, self.record, self.epoch):
                log.warning("fenced stale master %s (its record was %r)", ep, rec)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            pass

    # ------------------------------------------------------------ fenced calls
    def claim(self, study: str, fingerprint: str, claim: str) -> str | None:
        """Claim a param set; None when it was free (now ours), else the claim that holds it."""
        return self._run("claim", [self.claims_key(study)], [fingerprint, claim])

    def update_claim(self, study: str, fingerprint: str, owner: str, claim: str | None) -> bool:
        """Replace (``claim``) or delete (None) a claim while ``owner`` still holds it."""
        return bool(self._run("update_claim", [self.claims_key(study)], [fingerprint, owner, claim or ""]))

    def heartbeat(self, worker_ids: Iterable[str], ttl_ms: int) -> None:
        """Refresh the heartbeat keys of these journal worker ids."""
        self._run("hb", [self.hb_key(w) for w in worker_ids], [ttl_ms])

    def append(self, study: str, worker_id: str, hb_ttl_ms: int, read_from: int, entries: list[str]) -> list[str]:
        """Append journal entries (and refresh ``worker_id``'s heartbeat unless ``hb_ttl_ms`` is 0).
        Returns [length, entries from ``read_from``...], or [length] alone when that backlog is long."""
        return self._run("append", [self.journal_key(study), self.hb_key(worker_id), self.k_studies],
                         [hb_ttl_ms, read_from, study, *entries])

    def end_trial(self, study: str, trial_id: int, token: str, entries: list[str], fingerprint: str = "",
                  claim: str | None = None, unless_alive: str | None = None, result: bool = False) -> bool:
        """End a trial once (whoever comes first: its worker, a reaper, a failover settlement).

        Appends ``entries`` and, if ``fingerprint`` is given and its claim is still ``token``'s,
        sets it to ``claim`` (None deletes it), atomically; nothing when the trial was already
        ended under this token (one-shot marker; ``result``: the marker of a recorded result)
        or, with ``unless_alive``, while that worker id's heartbeat key exists. True if done."""
        marker = f"{self.ns}:ended:{study}:{trial_id}:{token}" + (":result" if result else "")
        hb = self.hb_key(unless_alive) if unless_alive else ""
        return bool(self._run("end", [self.journal_key(study), self.claims_key(study), marker, hb],
                              [fingerprint, token, claim or "", *entries]))

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a fenced script on the writer. For the journal writers ('append', 'end',
        whose first key is the journal) the journal guard and NS:seq are added here."""
        record, scripts = self._state
        script = scripts[name]
        if name in ("append", "end"):
            seen, last = self.journal_pos.get(keys[0], (0, ""))
            keys = [*keys, self.k_seq]
            args = [seen, last, *args]
        try:
            return script(keys=[self.k_writer, *keys], args=[record, *args])
        except redis.ResponseError as exc:
            raise _map_error(exc) from None

    def wait_replicas(self, timeout_ms: int = 1000) -> int:
        """Block until the replicas have our writes (if there are replicas)."""
        if self.replicas <= 0:
            return 0
        got = int(self.writer.execute_command("WAIT", self.replicas, timeout_ms))
        if got < self.replicas:  # a standby left: do not make every later trial wait for it
            self.refresh_replicas()
        return got

    def refresh_replicas(self) -> None:
        """Re-read how many replicas the writer has (a standby may have joined or left)."""
        try:
            self.replicas = live_replicas(self.writer.info("replication"))
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            pass

    def hb_key(self, worker_id: str) -> str:
        return f"{self.ns}:hb:{worker_id}"

    def journal_key(self, study: str) -> str:
        return f"{self.ns}:journal:{study}"

    def claims_key(self, study: str) -> str:
        return f"{self.ns}:claims:{study}"


def __getattr__(name: str) -> Any:
    # FencedJournalBackend lives in hpo_worker.backend (it imports Optuna, which the
    # read-only commands do not need); this alias keeps `from hpo_worker.store import
    # FencedJournalBackend` working for the molecule verifiers.
    if name == "FencedJournalBackend":
        from .backend import FencedJournalBackend

        return FencedJournalBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
