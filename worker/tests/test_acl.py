"""The workers' store user (roles/keydb keydb_worker_user, docs/security.md) on
real servers: Debian's redis-server and, when its packages are here, real
KeyDB 6.3.4. The user is defined by the same rules the role writes into the
server's config (read from roles/keydb/vars/main.yml), passed as a `user`
directive on the server's command line.

Refused to it: the administration commands no worker needs (CONFIG, DEBUG,
FLUSHALL, FLUSHDB, MODULE, SHUTDOWN, KEYS, ACL, ...) and REPLICAOF other than
REPLICAOF NO ONE. Allowed: everything a worker does, including the failover
(REPLICAOF NO ONE on a Redis replica).
"""

from __future__ import annotations

import collections
import subprocess
import sys

import pytest
import redis
from conftest import (
    PASSWORD,
    WORKER_PASSWORD,
    WORKER_USER,
    load_trials,
    read_evals,
    start_worker,
    wait_for,
    worker_env,
    worker_user_args,
    write_spec,
)

# (command, arguments): every one must be refused to the worker user: NOPERM
# from the ACL. Redis 7 also turns DEBUG and MODULE off for every client
# (enable-debug-command, enable-module-command) and says so before the ACL
# is asked; that refusal counts too.
REFUSED = [
    ("CONFIG", ["GET", "requirepass"]),
    ("CONFIG", ["SET", "appendonly", "no"]),
    ("DEBUG", ["SLEEP", "0"]),
    ("FLUSHALL", []),
    ("FLUSHDB", []),
    ("MODULE", ["LIST"]),
    ("SHUTDOWN", ["NOSAVE"]),
    ("KEYS", ["*"]),
    ("ACL", ["LIST"]),
    ("MONITOR", []),
    ("BGSAVE", []),
    ("REPLICAOF", ["198.18.0.1", "6379"]),
    ("SLAVEOF", ["NO", "ONE"]),
]


def worker_client(server) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, username=WORKER_USER, password=WORKER_PASSWORD,
                       decode_responses=True, socket_connect_timeout=2, socket_timeout=10)


def check_refusals_and_data_commands(server) -> None:
    c = worker_client(server)
    admin = server.client()
    admin.set("canary", "still here")
    for command, args in REFUSED:
        with pytest.raises(redis.exceptions.ResponseError) as refused:
            c.execute_command(command, *args)
        message = str(refused.value)
        assert isinstance(refused.value, redis.exceptions.NoPermissionError) or (
            command in ("DEBUG", "MODULE") and "command not allowed" in message), f"{command}: {message}"
    assert admin.get("canary") == "still here", "a refused FLUSH* still flushed"
    assert admin.ping(), "a refused SHUTDOWN still stopped the server"
    # what the workers use: plain data commands, Lua scripts, ROLE, INFO, WAIT, SCAN
    c.set("hpo:test", "1")
    assert c.incr("hpo:test") == 2
    assert c.eval("return redis.call('GET', KEYS[1])", 1, "hpo:test") == "2"
    assert c.execute_command("ROLE")[0] in ("master", "active-replica")
    assert "role" in c.info("replication")
    assert c.execute_command("WAIT", 0, 10) >= 0
    assert "hpo:test" in list(c.scan_iter("hpo:*"))
    # a wrong password for the user is refused like any other
    bad = redis.Redis(host="127.0.0.1", port=server.port, username=WORKER_USER, password=PASSWORD)
    with pytest.raises(redis.exceptions.AuthenticationError):
        bad.ping()


def test_redis_worker_user_refuses_administration(servers):
    check_refusals_and_data_commands(servers("acl", extra_args=worker_user_args()))


def test_keydb_worker_user_refuses_administration(keydb_group):
    a, b = keydb_group(2, extra_args=worker_user_args())
    check_refusals_and_data_commands(a)
    # the user exists on every master: the config line is the same on each node
    assert worker_client(b).ping()


def test_redis_study_and_failover_with_the_worker_user(servers, tmp_path):
    """Workers that hold only the worker user run a study, and when the primary is
    killed they promote the replica themselves (REPLICAOF NO ONE as that user)."""
    acl = worker_user_args()
    m1 = servers("m", persist=True, extra_args=acl)
    m2 = servers("s", replicaof=m1, extra_args=acl)
    spec = write_spec(tmp_path / "s.yaml", name="acl",
                      space={"x": {"type": "int", "low": 0, "high": 9}, "y": {"type": "int", "low": 0, "high": 9}},
                      budget={"n_trials": 60})
    evals = tmp_path / "e.jsonl"
    env = worker_env(evals, sleep=0.1, HPO_KEYDB_USERNAME=WORKER_USER, HPO_KEYDB_PASSWORD=WORKER_PASSWORD)
    p = start_worker(spec, [m1.endpoint, m2.endpoint], env, processes=2, log=tmp_path / "w.log")
    wait_for(lambda: len(read_evals(evals, "end")) >= 15 or p.poll() is not None, 60, what="15 evaluations")
    assert p.poll() is None, (tmp_path / "w.log").read_text()[-4000:]
    m1.kill()
    assert p.wait(120) == 0, (tmp_path / "w.log").read_text()[-4000:]
    assert m2.client().info("replication")["role"] == "master", "the replica was not promoted"
    assert m2.client().get("hpo:writer") == f"2 {m2.endpoint}"
    log = (tmp_path / "w.log").read_text()
    assert "promoting replica" in log and "NOPERM" not in log, log[-3000:]
    states = collections.Counter(t.state.name for t in load_trials(m2.endpoint, "acl"))
    assert states["RUNNING"] == 0 and states["COMPLETE"] >= 60, states
    # report (twice: the second reads its cache, a MULTI) and trials as the worker user,
    # the old primary down; a wrong password: exit 2 naming the master
    cmd = [sys.executable, "-m", "hpo_worker", "--endpoints", f"{m1.endpoint},{m2.endpoint}"]
    for args in (["report"], ["report"], ["trials", "--json"]):
        p = subprocess.run([*cmd[:3], *args, *cmd[3:]], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        if args[0] == "report":
            assert f"COMPLETE: {states['COMPLETE']}  " in p.stdout, p.stdout
        else:
            assert len(p.stdout.splitlines()) == sum(states.values())
    bad = dict(env, HPO_KEYDB_PASSWORD="wrong")
    p = subprocess.run([*cmd[:3], "report", *cmd[3:]], env=bad, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and f"{m2.endpoint} refused the user or password" in p.stderr, p.stderr


def test_keydb_study_and_failover_with_the_worker_user(keydb_group, tmp_path):
    """The same on two real KeyDB masters: one SIGKILL of the writer, restarted
    through the rejoin guard; nothing lost, nothing evaluated twice."""
    from test_keydb import chaos_run

    group = keydb_group(2, extra_args=worker_user_args())
    r = chaos_run(tmp_path, group, kills=1, n_trials=120,
                  HPO_KEYDB_USERNAME=WORKER_USER, HPO_KEYDB_PASSWORD=WORKER_PASSWORD)
    assert r["identical"], r
    assert r["lost"] == 0 and r["twice"] == 0 and r["running"] == 0 and r["wrong_values"] == 0, r
    assert r["complete"] >= 120, r
    assert r["epoch"].startswith("2 "), r
