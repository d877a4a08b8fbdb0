"""Verifier of the keydb scenarios (molecule/keydb with the Redis fallback,
molecule/keydb-packages with real KeyDB packages): replication between all
nodes, keys written on one node readable on the others, no key lost when the
third node joined, the password enforced, and the port bound to the cluster
address and loopback only.

The engine comes from the inventory (keydb_engine). Commands run on the
nodes with the server's own client; the password travels in REDISCLI_AUTH.
"""

from __future__ import annotations

import re
import shlex
import sys
import uuid
from pathlib import Path

import pytest
from keydb_replies import all_links_up, master_links, parse_info, parse_role, replicas, role_from_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))
from verify_helpers import INVENTORY, RUNNER, ansible_playbook, node, poll  # noqa: E402

NODES = sorted(RUNNER.get_hosts("keydb"))
testinfra_hosts = [f"ansible://{name}?ansible_inventory={INVENTORY}" for name in NODES]

VARS = {name: RUNNER.get_variables(name) for name in NODES}
ENGINE = VARS[NODES[0]].get("keydb_engine", "keydb")
PASSWORD = VARS[NODES[0]]["keydb_password"]
PORT = int(VARS[NODES[0]].get("keydb_port", 6379))
CLI = f"{ENGINE}-cli"  # keydb-cli, valkey-cli, redis-cli
SERVICE = f"{ENGINE}-server"
DATA_DIR = f"/var/lib/{ENGINE}"
PRIMARY = NODES[0]  # engines valkey, redis: the first host of the group
INITIAL = VARS[NODES[0]].get("keydb_test_initial_members", [])
KEYS_PER_WRITER = 100


def address(name: str) -> str:
    return VARS[name]["cluster_address"]


def cli(name: str, *args: str, at: str = "127.0.0.1", password: str | None = PASSWORD):
    """Run the server's client on node `name` against `at`; returns the result."""
    env = f"REDISCLI_AUTH={shlex.quote(password)} " if password is not None else ""
    quoted = " ".join(shlex.quote(a) for a in args)
    return node(name).run(f"{env}{CLI} -h {at} -p {PORT} --no-auth-warning {quoted}")


def info_replication(name: str) -> dict:
    """INFO replication as {field: [values]} (keydb_replies.parse_info)."""
    out = cli(name, "INFO", "replication")
    assert out.rc == 0, out.stderr
    return parse_info(out.stdout)


def test_service_enabled_and_running(host) -> None:
    service = host.service(SERVICE)
    assert service.is_running
    assert service.is_enabled


def test_listens_on_cluster_address_and_loopback_only(host) -> None:
    name = host.backend.get_hostname()
    out = host.run(f"ss -Hltn 'sport = :{PORT}'")
    assert out.rc == 0, out.stderr
    # A set: KeyDB opens one listening socket per server thread (SO_REUSEPORT).
    listeners = {line.split()[3] for line in out.stdout.splitlines() if line.strip()}
    assert listeners == {f"127.0.0.1:{PORT}", f"{address(name)}:{PORT}"}, listeners


def test_port_closed_on_other_addresses_of_the_node(host) -> None:
    """Give the node a second address and try the port there: refused."""
    extra = f"198.19.254.{NODES.index(host.backend.get_hostname()) + 1}"
    host.run(f"ip addr add {extra}/32 dev lo")
    try:
        probe = cli(host.backend.get_hostname(), "PING", at=extra)
        assert probe.rc != 0 and "PONG" not in probe.stdout, probe.stdout
        assert "refused" in (probe.stdout + probe.stderr).lower()
        v6 = cli(host.backend.get_hostname(), "PING", at="::1")
        assert "PONG" not in v6.stdout and "refused" in (v6.stdout + v6.stderr).lower()
        # The same client reaches the bound address.
        assert cli(host.backend.get_hostname(), "PING", at=address(host.backend.get_hostname())).stdout.strip() == "PONG"
    finally:
        host.run(f"ip addr del {extra}/32 dev lo")


@pytest.mark.parametrize("password", [None, "wrong-password"], ids=["no-password", "wrong-password"])
def test_unauthenticated_clients_are_refused_from_a_peer(password) -> None:
    for target in NODES:
        peer = next(n for n in NODES if n != target)
        out = cli(peer, "GET", "anything", at=address(target), password=password)
        text = out.stdout + out.stderr
        if password is None:
            assert "NOAUTH" in text, text
        else:
            assert "WRONGPASS" in text or "invalid password" in text, text
        assert cli(peer, "PING", at=address(target)).stdout.strip() == "PONG"


def test_settings_the_cluster_relies_on(host) -> None:
    name = host.backend.get_hostname()
    for key, expected in [("maxmemory-policy", "noeviction"), ("protected-mode", "yes"), ("appendonly", "yes")]:
        out = cli(name, "CONFIG", "GET", key)
        assert out.stdout.split() == [key, expected]


def replication_problems() -> dict:
    """Nodes whose replication is not as the engine's topology requires. KeyDB
    lists its second and later masters as master_1_*, master_2_*, ...
    (keydb_replies.master_links reads them all)."""
    bad = {}
    for name in NODES:
        info = info_replication(name)
        peers = {f"{address(p)}:{PORT}" for p in NODES if p != name}
        if ENGINE == "keydb":
            # Every other node is one of this node's masters, every link up.
            ok = info.get("role") == ["active-replica"] and all_links_up(info, peers)
        elif name == PRIMARY:
            online = {r for r, state in replicas(info).items() if state == "online"}
            ok = info.get("role") == ["master"] and online == peers and not master_links(info)
        else:
            ok = info.get("role") == ["slave"] and all_links_up(info, {f"{address(PRIMARY)}:{PORT}"})
        if not ok:
            bad[name] = info
    return bad


def test_every_replication_link_is_up() -> None:
    poll(lambda: not replication_problems(), timeout=30)
    assert replication_problems() == {}


def test_role_names_every_peer() -> None:
    """ROLE: KeyDB answers one active-replica entry per master, connected;
    a Redis/Valkey replica one slave entry naming the primary."""
    for name in NODES:
        entries = parse_role(role_from_cli(cli(name, "ROLE").stdout))
        got = {(e.role, f"{e.host}:{e.port}", e.state) for e in entries}
        if ENGINE == "keydb":
            want = {("active-replica", f"{address(p)}:{PORT}", "connected") for p in NODES if p != name}
        elif name == PRIMARY:
            want = set()
        else:
            want = {("slave", f"{address(PRIMARY)}:{PORT}", "connected")}
        assert got == want, f"{name}: ROLE {entries}"


def count_keys(name: str, pattern: str) -> int:
    out = cli(name, "--scan", "--pattern", pattern)
    assert out.rc == 0, out.stderr
    return len(out.stdout.split())


def test_keys_written_before_the_join_are_on_every_node() -> None:
    """Item 'add a KeyDB node': nothing written before keydb-3 joined is lost,
    and keydb-3 has it too."""
    assert INITIAL, "the scenario's prepare step defines keydb_test_initial_members"
    writers = INITIAL if ENGINE == "keydb" else [INITIAL[0]]
    for name in NODES:
        for writer in writers:
            pattern = f"before-join:{writer}:*"
            poll(lambda n=name, p=pattern: count_keys(n, p) == KEYS_PER_WRITER, timeout=20)
            got = count_keys(name, pattern)
            assert got == KEYS_PER_WRITER, f"{name}: {got} of {KEYS_PER_WRITER} keys from {writer}"


def test_a_write_is_read_back_on_every_other_node() -> None:
    writers = NODES if ENGINE == "keydb" else [PRIMARY]
    for writer in writers:
        key, value = f"verify:{writer}:{uuid.uuid4().hex}", uuid.uuid4().hex
        assert cli(writer, "SET", key, value).stdout.strip() == "OK"
        for reader in NODES:
            if reader == writer:
                continue
            got = poll(lambda r=reader, k=key, v=value: cli(r, "GET", k).stdout.strip() == v, timeout=15)
            assert got, f"{key} written on {writer} not readable on {reader}"


@pytest.mark.skipif(ENGINE == "keydb", reason="KeyDB active replicas accept writes on every node")
def test_redis_replicas_refuse_writes() -> None:
    for name in NODES:
        if name == PRIMARY:
            continue
        out = cli(name, "SET", "verify:replica-write", "x")
        assert "READONLY" in out.stdout + out.stderr


def test_adding_a_node_restarts_only_what_must_change() -> None:
    """Redis, Valkey: a new replica needs no change on the primary or the other
    replicas, so their servers keep running (same run_id as before the join).
    KeyDB: every existing peer needs the new replicaof line, so each was
    restarted once (new run_id) and still has its data (checked above)."""
    for name in INITIAL:
        before = node(name).file("/root/keydb-test-run-id-before-join").content_string.strip()
        now = re.search(r"run_id:([0-9a-f]+)", cli(name, "INFO", "server").stdout).group(1)
        assert len(before) == 40, f"{name}: no run_id recorded before the join"
        if ENGINE != "keydb":
            assert now == before, f"{name} was restarted although nothing changed for it"
        else:
            assert now != before, f"{name} did not pick up the new peer"


@pytest.mark.skipif(ENGINE == "keydb", reason="failover by promotion concerns primary + replicas (valkey, redis)")
def test_failover_drill_promoted_replica_is_not_demoted_by_a_rerun() -> None:
    """What the worker does when the Redis primary dies (REPLICAOF NO ONE on
    the next host), then what the operator does (docs/keydb.md): a re-run
    with the old keydb_redis_primary is refused, a re-run naming the promoted
    host makes the others its replicas, and nothing written after the
    failover is lost. Runs last: it changes the primary."""
    promoted = NODES[1]
    assert cli(promoted, "REPLICAOF", "NO", "ONE").stdout.strip() == "OK"
    key, value = "after-failover", uuid.uuid4().hex
    assert cli(promoted, "SET", key, value).stdout.strip() == "OK"

    refused = ansible_playbook("keydb.yml")
    assert refused.returncode != 0
    out = refused.stdout + refused.stderr
    assert f"host(s) {promoted} run as the Redis primary since a failover" in out, out[-3000:]
    assert f"Set keydb_redis_primary: {promoted}" in out
    assert cli(promoted, "GET", key).stdout.strip() == value, "the refused run changed the promoted primary"

    moved = ansible_playbook("keydb.yml", "-e", f"keydb_redis_primary={promoted}")
    assert moved.returncode == 0, (moved.stdout + moved.stderr)[-3000:]

    def follow_promoted() -> bool:
        for name in NODES:
            info = info_replication(name)
            if name == promoted:
                if info.get("role") != ["master"]:
                    return False
            elif not all_links_up(info, {f"{address(promoted)}:{PORT}"}):
                return False
        return True

    assert poll(follow_promoted, timeout=30), {n: info_replication(n) for n in NODES}
    for name in NODES:
        assert poll(lambda n=name: cli(n, "GET", key).stdout.strip() == value, timeout=15), name
        assert count_keys(name, f"before-join:{INITIAL[0]}:*") == KEYS_PER_WRITER, name


@pytest.mark.skipif(ENGINE != "keydb", reason="checks the layout of KeyDB's own packages")
def test_paths_user_and_permissions_are_the_packages(host) -> None:
    """As keydb-tools' postinst lays them out (../shared/keydb-debs/README.md):
    data keydb:keydb 0750, log keydb:adm 2750; the role's config root:keydb
    0640; the server runs as keydb under the packaged unit (forked, pidfile)."""
    data, log = host.file("/var/lib/keydb"), host.file("/var/log/keydb")
    assert (data.user, data.group, data.mode) == ("keydb", "keydb", 0o750)
    assert (log.user, log.group, log.mode) == ("keydb", "adm", 0o2750)
    conf = host.file("/etc/keydb/keydb.conf")
    assert (conf.user, conf.group, conf.mode) == ("root", "keydb", 0o640)
    assert host.file("/var/log/keydb/keydb-server.log").user == "keydb"
    pid = host.file("/var/run/keydb/keydb-server.pid").content_string.strip()
    assert host.run(f"ps -o user= -p {pid}").stdout.strip() == "keydb"
    assert host.run("systemctl show keydb-server -p MainPID --value").stdout.strip() == pid


GUARD = "/usr/local/libexec/hpo/keydb-rejoin-guard"
GUARD_ENV = "/etc/keydb/hpo-rejoin-guard.env"


@pytest.mark.skipif(ENGINE != "keydb", reason="the rejoin guard concerns KeyDB active replicas")
def test_rejoin_guard_runs_before_every_start(host) -> None:
    """The drop-in runs the guard with the data dir and every peer; its
    password file is readable by root and the keydb group only."""
    name = host.backend.get_hostname()
    guard = host.file(GUARD)
    assert guard.user == "root" and guard.mode == 0o755
    env = host.file(GUARD_ENV)
    assert (env.user, env.group, env.mode) == ("root", "keydb", 0o640)
    assert f"REDISCLI_AUTH={PASSWORD}" in host.run(f"cat {GUARD_ENV}").stdout
    pre = host.run("systemctl show keydb-server -p ExecStartPre --value").stdout
    assert GUARD in pre, pre
    for peer in NODES:
        if peer != name:
            assert f"{address(peer)}:{PORT}" in pre, pre
    # The packaged unit and the drop-in load without complaint.
    verify = host.run("systemd-analyze verify --man=no keydb-server.service")
    assert verify.rc == 0, verify.stdout + verify.stderr
    assert "hpo-rejoin-guard" not in verify.stdout + verify.stderr


@pytest.mark.skipif(ENGINE != "keydb", reason="the rejoin guard concerns KeyDB active replicas")
def test_a_returning_node_starts_empty_and_resyncs() -> None:
    """Stop keydb-server on one node (a clean stop under the packaged
    Type=forking unit), write on another, start it again: the guard moved its
    old files to stale/<time>/, and it holds the new data (resynced)."""
    returning, survivor = NODES[-1], NODES[0]
    h = node(returning)
    stale = f"{DATA_DIR}/stale"
    before = set(h.run(f"ls {stale} 2>/dev/null").stdout.split())
    old_key, old_value = f"rejoin:old:{uuid.uuid4().hex}", uuid.uuid4().hex
    assert cli(returning, "SET", old_key, old_value).stdout.strip() == "OK"

    stop = h.run("systemctl stop keydb-server")
    assert stop.rc == 0, stop.stderr
    assert h.run("systemctl is-active keydb-server").stdout.strip() == "inactive"
    assert not h.file("/var/run/keydb/keydb-server.pid").exists, "no clean stop: the pidfile is left"
    assert h.run("pgrep -x keydb-server").rc == 1
    assert h.run(f"ls {DATA_DIR}").stdout.split(), "the stopped node has data files"

    new_key, new_value = f"rejoin:new:{uuid.uuid4().hex}", uuid.uuid4().hex
    assert cli(survivor, "SET", new_key, new_value).stdout.strip() == "OK"

    start = h.run("systemctl start keydb-server")
    assert start.rc == 0, start.stderr + h.run("journalctl -u keydb-server -n 30 --no-pager").stdout
    assert poll(lambda: cli(returning, "GET", new_key).stdout.strip() == new_value, timeout=30), \
        f"{returning} did not resync the write made while it was down"
    assert cli(returning, "GET", old_key).stdout.strip() == old_value  # came back through the resync
    added = set(h.run(f"ls {stale}").stdout.split()) - before
    assert len(added) == 1, f"{stale}: {added}"
    moved = h.run(f"ls {stale}/{added.pop()}").stdout.split()
    assert set(moved) & {"dump.rdb", "appendonly.aof"}, moved
    journal = h.run("journalctl -u keydb-server --no-pager -n 200").stdout
    assert f"keydb-rejoin-guard: peer {address(survivor)}:{PORT} is serving data" in journal or \
        "is serving data: moved local" in journal, journal[-2000:]
    poll(lambda: not replication_problems(), timeout=30)
    assert replication_problems() == {}
