"""Real redis-server processes on loopback, and real worker subprocesses.

Debian's redis-server stands in for KeyDB: a primary and a replica replace two
KeyDB active replicas (see README "What only KeyDB's active replication gives").
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml

HERE = Path(__file__).resolve().parent
PASSWORD = "test-pass-Zq8"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The workers' ACL user as roles/keydb configures it (keydb_worker_user): its
# rules are read from the role, so the tests exercise what the nodes get.
WORKER_USER = "hpo-worker"
WORKER_PASSWORD = "worker-pass-Vt5"


def worker_acl_rules() -> list[str]:
    role_vars = yaml.safe_load((HERE.parent.parent / "roles" / "keydb" / "vars" / "main.yml").read_text())
    return role_vars["_keydb_worker_acl_rules"].split()


def worker_user_args() -> list[str]:
    """Server arguments that define the workers' user, like the `user` line of keydb.conf."""
    digest = hashlib.sha256(WORKER_PASSWORD.encode()).hexdigest()
    return ["--user", WORKER_USER, "on", f"#{digest}", *worker_acl_rules()]


class RedisProc:
    def __init__(self, workdir: Path, name: str, replicaof: RedisProc | None = None,
                 persist: bool = False, extra_args: list[str] | None = None) -> None:
        self.extra_args = list(extra_args or [])
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.replicaof = replicaof
        self.persist = persist
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, replicaof: RedisProc | None | bool = True) -> RedisProc:
        if replicaof is True:
            replicaof = self.replicaof
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--requirepass", PASSWORD, "--masterauth", PASSWORD, "--save", "",
                "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
                "--logfile", str(self.dir / "redis.log"), "--daemonize", "no"]
        if replicaof:
            args += ["--replicaof", "127.0.0.1", str(replicaof.port)]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                if self.client().ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError) as exc:
                if time.time() > deadline:
                    raise RuntimeError(f"redis-server on {self.port} did not start; see {self.dir}/redis.log") from exc
                time.sleep(0.05)
        if replicaof:
            deadline = time.time() + 10
            while self.client().info("replication").get("master_link_status") != "up":
                if time.time() > deadline:
                    raise RuntimeError(f"replica {self.port} did not sync")
                time.sleep(0.05)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, decode_responses=True,
                           socket_connect_timeout=2, socket_timeout=10)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGKILL)


@pytest.fixture(autouse=True, scope="session")
def _report_cache_dir(tmp_path_factory):
    """`hpo-worker report` keeps a cache of replayed journals: the tests' own, not the user's."""
    old = os.environ.get("HPO_CACHE_DIR")
    os.environ["HPO_CACHE_DIR"] = str(tmp_path_factory.mktemp("report-cache"))
    yield
    if old is None:
        os.environ.pop("HPO_CACHE_DIR", None)
    else:
        os.environ["HPO_CACHE_DIR"] = old


@pytest.fixture
def servers(tmp_path):
    made: list[RedisProc] = []

    def make(name: str = "r", replicaof: RedisProc | None = None, persist: bool = False,
             extra_args: list[str] | None = None) -> RedisProc:
        r = RedisProc(tmp_path, f"{name}{len(made)}", replicaof, persist, extra_args)
        made.append(r)
        return r.start()

    yield make
    for r in made:
        r.stop()


# spec_with(BASE, a__b=value): a copy of the spec mapping BASE with the field
# a.b set to value, or removed when value is DELETE.
DELETE = object()


def spec_with(base: dict, **changes) -> dict:
    d = copy.deepcopy(base)
    for dotted, value in changes.items():
        keys = dotted.split("__")
        node = d
        for k in keys[:-1]:
            node = node[k]
        if value is DELETE:
            node.pop(keys[-1])
        else:
            node[keys[-1]] = value
    return d


def write_spec(path: Path, **overrides) -> Path:
    spec = {
        "name": "t",
        "direction": "minimize",
        "sampler": {"type": "random", "seed": None},
        "space": {"x": {"type": "int", "low": 0, "high": 9}, "y": {"type": "int", "low": 0, "high": 4}},
        "budget": {"n_trials": 20},
        "objective": "objectives:record",
        "worker": {"heartbeat_interval": 0.3, "heartbeat_ttl": 1.5},
    }
    spec.update(overrides)
    if spec.get("direction") is None:
        spec.pop("direction")
    if spec["sampler"].get("seed", 0) is None:
        spec["sampler"].pop("seed")
    path.write_text(yaml.safe_dump(spec))
    return path


def worker_env(eval_log: Path, sleep: float = 0.0, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HPO_KEYDB_PASSWORD": PASSWORD, "HPO_TEST_EVAL_LOG": str(eval_log),
                "HPO_TEST_SLEEP": str(sleep), "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def start_worker(spec: Path, endpoints: list[str], env: dict, host: str = "h1", processes: int = 1,
                 log: Path | None = None, python: str = sys.executable) -> subprocess.Popen:
    cmd = [python, "-m", "hpo_worker", "run", str(spec), "--endpoints", ",".join(endpoints),
           "--code-dir", str(HERE), "--host-label", host, "--processes", str(processes)]
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def read_evals(path: Path, phase: str | None = None) -> list[dict]:
    """The objective's records ("start"/"end" per evaluation), only `phase` if given."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if phase is None or r["phase"] == phase]


def wait_for(cond, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `cond` every 50 ms; fail the test naming `what` after `timeout` seconds."""
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def load_trials(endpoint: str, study: str):
    """Trials as Optuna replays them from the writer's journal (a fresh reader)."""
    import optuna
    from hpo_worker.backend import FencedJournalBackend
    from hpo_worker.store import Store
    from optuna.storages import JournalStorage

    store = Store([endpoint], password=PASSWORD)
    store.elect(wait=5)
    storage = JournalStorage(FencedJournalBackend(store, 0, study))
    s = optuna.load_study(study_name=study, storage=storage)
    return s.get_trials(deepcopy=False)


# ------------------------------------------------------------------ real KeyDB
# KeyDB's own bookworm packages (../shared/keydb-debs beside the project, or
# HPO_KEYDB_DEBS): their binaries are unpacked once into a cache and run as
# active multi-master replicas on loopback, like the role configures them.
REPO = HERE.parent.parent
REJOIN_GUARD = REPO / "roles" / "keydb" / "files" / "keydb-rejoin-guard"


def keydb_debs() -> Path | None:
    for cand in (os.environ.get("HPO_KEYDB_DEBS"), REPO.parent / "shared" / "keydb-debs", "/work/shared/keydb-debs"):
        if cand and list(Path(cand).glob("keydb-tools_*.deb")):
            return Path(cand)
    return None


def keydb_bin() -> Path:
    """Directory holding keydb-server and keydb-cli from the packages (unpacked once)."""
    debs = keydb_debs()
    if debs is None:
        pytest.skip("real KeyDB packages not found: set HPO_KEYDB_DEBS to a directory with"
                    " keydb-tools_*.deb (KeyDB's repository cannot be reached from here)")
    deb = sorted(debs.glob("keydb-tools_*.deb"))[-1]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hpo-cluster" / deb.stem
    server = cache / "usr" / "bin" / "keydb-server"
    if not server.exists():
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        tmp.parent.mkdir(parents=True, exist_ok=True)  # ~/.cache is absent on a fresh machine
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        try:
            tmp.rename(cache)
        except OSError:  # another test process unpacked it first
            shutil.rmtree(tmp, ignore_errors=True)
    return server.parent


class KeyDBProc(RedisProc):
    """One real keydb-server: an active replica of every peer, accepting writes (multi-master)."""

    def __init__(self, workdir: Path, name: str, bindir: Path) -> None:
        super().__init__(workdir, name, persist=True)
        self.bindir = bindir
        self.peers: list[KeyDBProc] = []

    def start(self, replicaof: object = True, guard: bool = False) -> KeyDBProc:
        if guard:  # what the role's ExecStartPre does before a node comes back
            env = dict(os.environ, REDISCLI_AUTH=PASSWORD, KEYDB_CLI=str(self.bindir / "keydb-cli"))
            subprocess.run([str(REJOIN_GUARD), str(self.dir), *(p.endpoint for p in self.peers)],
                           env=env, check=True, capture_output=True, timeout=30)
        args = [str(self.bindir / "keydb-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--requirepass", PASSWORD, "--masterauth", PASSWORD, "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--logfile", str(self.dir / "keydb.log"),
                "--daemonize", "no", "--active-replica", "yes", "--multi-master", "yes",
                "--server-threads", "2"]
        for p in self.peers:
            args += ["--replicaof", "127.0.0.1", str(p.port)]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, 15, f"keydb-server on {self.port} (see {self.dir}/keydb.log)")
        return self

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except (redis.ConnectionError, redis.BusyLoadingError, redis.ResponseError):
            return False

    def links_up(self) -> bool:
        info = self.client().info("replication")
        return all(info.get(k) == "up" for k in info if k.endswith("link_status")) and \
            int(info.get("connected_masters", 0)) == len(self.peers)


@pytest.fixture
def keydb_group(tmp_path):
    """keydb_group(n) -> n real KeyDB masters, each an active replica of all others, links up."""
    bindir = keydb_bin()
    made: list[KeyDBProc] = []

    def make(n: int = 2, extra_args: list[str] | None = None) -> list[KeyDBProc]:
        group = [KeyDBProc(tmp_path, f"k{len(made) + i}", bindir) for i in range(n)]
        for k in group:
            k.peers = [o for o in group if o is not k]
            k.extra_args = list(extra_args or [])
        made.extend(group)
        for k in group:
            k.start()
        wait_for(lambda: all(k.links_up() for k in group), 20, "KeyDB replication links up")
        return group

    yield make
    for k in made:
        k.stop()
