"""One fenced writer on a group of KeyDB masters (or a Redis primary + replicas).

Keys (``NS`` defaults to ``hpo``), all on the writer master:

- ``NS:writer``        "EPOCH HOST:PORT": who the writer is, and since which epoch.
- ``NS:journal:STUDY`` a list, one JSON Optuna journal entry per element; one
                       journal per study, so a worker replays only its own study.
- ``NS:studies``       the set of study names that have a journal.
- ``NS:hb:WORKER_ID``  heartbeat of one Optuna worker id, with a TTL.
- ``NS:claims:STUDY``  hash: params fingerprint -> JSON claim (RUNNING/COMPLETE).
- ``NS:ended:...``     one-shot markers so a trial is ended by one party only (kept 14 days).

Every write is a Lua script that first checks ``NS:writer`` equals the record the
caller was elected under; if not, the script writes nothing and answers
``HPOFENCED``. The writer is the reachable master with the highest epoch; when
it fails, workers promote the next reachable master in inventory order with a
compare-and-set on its writer key (``REPLICAOF NO ONE`` first if it is a Redis
replica), and every worker converges on the highest epoch.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from optuna.storages.journal import BaseJournalBackend
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger("hpo_worker.store")

CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0
READ_CHUNK = 20_000
REAPER_WORKER_ID = "hpo-worker-reaper"  # never the id of a live JournalStorage

# ---------------------------------------------------------------- Lua scripts
_CHECK = """
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then
  return redis.error_reply('HPOFENCED writer is ' .. tostring(cur) .. ', not ' .. ARGV[1])
end
"""

# KEYS: writer, journal, hb, studies   ARGV: expected, hb_ttl_ms, read_from, study, log...
# Returns {length, entries since read_from...} so the caller needs no second round trip
# to read back what it (and others, meanwhile) appended; only the length if that backlog is long.
APPEND = _CHECK + """
for i = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
if ARGV[2] ~= '0' then redis.call('SET', KEYS[3], '1', 'PX', ARGV[2]) end
redis.call('SADD', KEYS[4], ARGV[4])
local n = redis.call('LLEN', KEYS[2])
local from = tonumber(ARGV[3])
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

# End a trial once: KEYS: writer, journal, claims, ended_marker, hb_must_be_absent ('' = no check)
# ARGV: expected, fingerprint ('' = none), owner_token, new_claim ('' = delete), log...
END_TRIAL = _CHECK + """
if KEYS[5] ~= '' and redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', 1209600) then return 0 end
if ARGV[2] ~= '' then
  local cur = redis.call('HGET', KEYS[3], ARGV[2])
  local mine = true
  if cur then
    local ok, decoded = pcall(cjson.decode, cur)
    mine = ok and decoded['owner'] == ARGV[3]
  end
  if mine then
    if ARGV[4] == '' then redis.call('HDEL', KEYS[3], ARGV[2])
    else redis.call('HSET', KEYS[3], ARGV[2], ARGV[4]) end
  end
end
for i = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
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


class StoreAuthError(RuntimeError):
    """A master refused our password (or we sent none)."""


class NoWriter(RuntimeError):
    """No master of the group is reachable."""


WriterLost = (redis.ConnectionError, redis.TimeoutError, Fenced, redis.ReadOnlyError)


def parse_endpoints(text: str) -> list[str]:
    """'host:port,host:port' -> list; errors name the bad item."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--endpoints / HPO_KEYDB_ENDPOINTS: {item!r} is not host:port")
        out.append(f"{host}:{int(port)}")
    if not out:
        raise ValueError("--endpoints / HPO_KEYDB_ENDPOINTS: no endpoint given (comma-separated host:port)")
    if len(set(out)) != len(out):
        raise ValueError("--endpoints / HPO_KEYDB_ENDPOINTS: an endpoint is listed twice")
    return out


def parse_record(rec: str | None) -> tuple[int, str]:
    if not rec:
        return (-1, "")
    epoch, _, ep = rec.partition(" ")
    try:
        return (int(epoch), ep)
    except ValueError:
        return (-1, "")


def role_kind(role: Any) -> str:
    """'master' for a node that accepts writes, 'replica' for a read-only one.

    Redis answers ROLE with ["master", ...] or ["slave", ...]. A KeyDB active
    replica answers ["active-replica", host, port, state, offset] and, with
    more than one master configured, a list of such lists: it accepts writes.
    """
    if not role:
        return "master"
    first = role[0]
    if isinstance(first, (list, tuple)):
        first = first[0] if first else "master"
    if isinstance(first, bytes):
        first = first.decode()
    return "master" if first in ("master", "active-replica") else "replica"


def _map_error(exc: redis.ResponseError) -> Exception:
    if str(exc).startswith("HPOFENCED"):
        return Fenced(str(exc))
    return exc


class Store:
    """The current writer of a master group, its election and the fenced scripts.

    Thread-safe: the heartbeat thread and the main thread share one Store.
    """

    def __init__(self, endpoints: list[str], password: str | None = None, namespace: str = "hpo",
                 allow_promote_replica: bool = True) -> None:
        self.endpoints = list(endpoints)
        self.password = password
        self.ns = namespace
        self.allow_promote_replica = allow_promote_replica
        self._lock = threading.RLock()  # held by elections only; fenced calls never wait on it
        self._clients: dict[str, redis.Redis] = {}
        self.record: str = ""  # "EPOCH HOST:PORT" we write under
        self.writer: redis.Redis | None = None
        self.generation = 0  # bumps on every change of writer
        self.replicas = 0
        self.adopted_at = 0.0  # time.monotonic() of the last change of writer
        self._state: tuple[str, dict[str, Any]] = ("", {})
        self.k_writer = f"{namespace}:writer"
        self.k_studies = f"{namespace}:studies"

    # ------------------------------------------------------------ connections
    def client(self, endpoint: str) -> redis.Redis:
        c = self._clients.get(endpoint)
        if c is None:
            host, _, port = endpoint.rpartition(":")
            c = redis.Redis(host=host, port=int(port), password=self.password, decode_responses=True,
                            socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT,
                            health_check_interval=0, retry=Retry(NoBackoff(), 0))
            self._clients[endpoint] = c
        return c

    def close(self) -> None:
        for c in self._clients.values():
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing best effort
                pass

    def _probe(self, endpoint: str) -> tuple[int, str, str | None, str] | None:
        """(epoch, named writer, raw record, role) of a master, or None when unreachable."""
        try:
            c = self.client(endpoint)
            pipe = c.pipeline(transaction=False)
            pipe.get(self.k_writer)
            pipe.execute_command("ROLE")
            rec, role = pipe.execute()
            epoch, named = parse_record(rec)
            return (epoch, named, rec, role_kind(role))
        except redis.AuthenticationError as exc:
            raise StoreAuthError(f"{endpoint} refused the password (set HPO_KEYDB_PASSWORD): {exc}") from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise StoreAuthError(f"{endpoint} refused the password (set HPO_KEYDB_PASSWORD): {exc}") from None
            log.warning("endpoint %s unreachable: %r", endpoint, exc)
            return None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("endpoint %s unreachable: %r", endpoint, exc)
            return None

    # ------------------------------------------------------------ election
    def elect(self, failed: str | None = None, wait: float = 60.0, stop: threading.Event | None = None,
              promote: bool = True) -> str:
        """Find (or make) the writer. ``failed`` is an endpoint just seen failing.

        Returns the writer record. Waits up to ``wait`` seconds for some master.
        """
        deadline = time.monotonic() + wait
        delay = 0.2
        while True:
            with self._lock:
                rec = self._elect_once(failed) if promote else self._elect_once_adopt_only()
                if rec:
                    return rec
            if stop is not None and stop.is_set():
                raise NoWriter("stopping while no master of the group is reachable")
            if time.monotonic() > deadline:
                raise NoWriter(f"no master reachable among {', '.join(self.endpoints)}")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _elect_once(self, failed: str | None) -> str | None:
        probes = {ep: self._probe(ep) for ep in self.endpoints}
        reachable = {ep: p for ep, p in probes.items() if p is not None}
        if not reachable:
            return None
        best_epoch = max(p[0] for p in reachable.values())
        # masters before replicas, inventory order within each
        top = sorted((ep for ep in self.endpoints if ep in reachable and reachable[ep][0] == best_epoch),
                     key=lambda ep: (reachable[ep][3] != "master", self.endpoints.index(ep)))
        # A master whose highest-epoch record names itself, is reachable and is a master: the writer.
        for ep in top:
            epoch, named, rec, role = reachable[ep]
            if named == ep and role == "master" and epoch >= 0:
                self._adopt(ep, rec)
                for other, (o_epoch, _, o_rec, o_role) in reachable.items():
                    if o_epoch < epoch and o_role == "master":
                        self._fence(other, o_rec)
                return rec
        # Nobody holds the highest record yet. If the writer it names still answers,
        # its record is only late on this probe: look again instead of promoting.
        named = next((reachable[ep][1] for ep in top if reachable[ep][1]), "")
        if not named and self.record and self.writer_endpoint not in reachable:
            named = self.writer_endpoint  # we followed a writer: its record had not replicated yet
        if named and named in reachable:
            return None
        if named:
            time.sleep(0.3)  # one more look before declaring the writer dead
            if self._probe(named) is not None:
                return None
        # The named writer is down (or nothing is set up yet): promote the first
        # reachable master in inventory order that holds the highest epoch; a replica
        # only when a writer existed before (a fresh group starts on a master).
        for ep in top:
            epoch, _, rec, role = reachable[ep]
            if role != "master" and (not named or not self.allow_promote_replica):
                continue
            new = f"{max(epoch, self.epoch, 0) + 1} {ep}"
            c = self.client(ep)
            try:
                if role != "master":
                    log.warning("promoting replica %s to master (REPLICAOF NO ONE)", ep)
                    c.execute_command("REPLICAOF", "NO", "ONE")
                got = c.eval(PROMOTE, 1, self.k_writer, rec or "", new)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                log.warning("could not promote %s: %s", ep, exc)
                continue
            if got == new and (rec or "") != new:
                log.warning("%s is the writer now (epoch %s, was %r)", ep, new.split()[0], rec)
            # someone else may have won the race: adopt whatever the highest record is now
            return self._elect_once_adopt_only()
        return None

    def _elect_once_adopt_only(self) -> str | None:
        best = None
        for ep in self.endpoints:
            p = self._probe(ep)
            if p and p[1] == ep and p[3] == "master" and (best is None or p[0] > best[1][0]):
                best = (ep, p)
        if best is None:
            return None
        self._adopt(best[0], best[1][2])
        return best[1][2]

    def _adopt(self, endpoint: str, rec: str) -> None:
        if rec != self.record:
            writer = self.client(endpoint)
            scripts = {name: writer.register_script(src) for name, src in
                       (("append", APPEND), ("hb", HEARTBEAT), ("claim", CLAIM),
                        ("update_claim", UPDATE_CLAIM), ("end", END_TRIAL))}
            try:
                info = writer.info("replication")
                self.replicas = int(info.get("connected_slaves", 0))
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                self.replicas = 0
            self.writer = writer
            self.record = rec
            self._state = (rec, scripts)
            self.adopted_at = time.monotonic()
            self.generation += 1
            log.info("writer: %s (replicas connected: %d)", rec, self.replicas)

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
        for ep in self.endpoints:
            p = self._probe(ep)
            if p is None:
                continue
            epoch, named, rec, role = p
            if epoch > my_epoch and named == ep and role == "master":
                newer = rec
            elif epoch < my_epoch and role == "master" and ep != self.writer_endpoint:
                self._fence(ep, rec)
        return newer

    def _fence(self, ep: str, rec: str | None) -> None:
        """Write our (higher) writer record onto a stale master, so writes aimed at it fail."""
        try:
            if self.client(ep).eval(FENCE_STALE, 1, self.k_writer, self.record, self.epoch):
                log.warning("fenced stale master %s (its record was %r)", ep, rec)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            pass

    # ------------------------------------------------------------ fenced calls
    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        record, scripts = self._state
        script = scripts[name]
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
            self.replicas = int(self.writer.info("replication").get("connected_slaves", 0))
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            pass

    def hb_key(self, worker_id: str) -> str:
        return f"{self.ns}:hb:{worker_id}"

    def journal_key(self, study: str) -> str:
        return f"{self.ns}:journal:{study}"

    def claims_key(self, study: str) -> str:
        return f"{self.ns}:claims:{study}"


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
        self.trial_owner: dict[int, str] = {}
        self._study_names: set[str] = set()
        self._n_studies = 0
        self._n_trials = 0
        self._tracked = 0
        self._cache: tuple[int, list[str]] | None = None

    def _check_generation(self) -> None:
        if self.store.generation != self.generation:
            raise Fenced("the writer changed; this storage view belongs to the previous writer")

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        self._check_generation()
        cached, self._cache = self._cache, None
        if cached is not None and cached[0] == log_number_from:
            # entries returned by our own append script: no round trip
            for i, raw in enumerate(cached[1]):
                entry = json.loads(raw)
                if log_number_from + i >= self._tracked:
                    self._track(entry)
                    self._tracked = log_number_from + i + 1
                yield entry
            return
        w = self.store.writer
        start = log_number_from
        while True:
            chunk = w.lrange(self.key, start, start + READ_CHUNK - 1)
            for i, raw in enumerate(chunk):
                entry = json.loads(raw)
                if start + i >= self._tracked:
                    self._track(entry)
                    self._tracked = start + i + 1
                yield entry
            if len(chunk) < READ_CHUNK:
                return
            start += len(chunk)

    def _track(self, e: dict[str, Any]) -> None:
        op = e["op_code"]
        if op == 0:
            if e["study_name"] not in self._study_names:
                self._study_names.add(e["study_name"])
                self._n_studies += 1
        elif op == 4:
            if e["study_id"] < self._n_studies:
                tid = self._n_trials
                self._n_trials += 1
                if e.get("state", 0) == 0:  # RUNNING
                    self.trial_owner[tid] = e["worker_id"]
        elif op == 6 and e["state"] == 0:  # RUNNING
            self.trial_owner.setdefault(e["trial_id"], e["worker_id"])

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._check_generation()
        worker_id = logs[0]["worker_id"] if logs else ""
        self.my_worker_ids.add(worker_id)
        read_from = self._tracked
        res = self.store.run("append", [self.key, self.store.hb_key(worker_id), self.store.k_studies],
                             [self.hb_ttl_ms, read_from, self.study, *(json.dumps(x) for x in logs)])
        if len(res) > 1 and int(res[0]) == read_from + len(res) - 1:
            self._cache = (read_from, res[1:])


def iter_journal(client: redis.Redis, key: str, chunk: int = READ_CHUNK) -> Iterable[str]:
    start = 0
    while True:
        part = client.lrange(key, start, start + chunk - 1)
        yield from part
        if len(part) < chunk:
            return
        start += len(part)
