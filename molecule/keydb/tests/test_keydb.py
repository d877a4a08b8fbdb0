"""Verifier of the keydb scenarios (molecule/keydb with the Redis fallback,
molecule/keydb-packages with real KeyDB packages): replication between all
nodes, keys written on one node readable on the others, no key lost when the
third node joined, the password enforced, and the port bound to the cluster
address and loopback only.

The engine comes from the inventory (keydb_engine). Commands run on the
nodes with the server's own client; the password travels in REDISCLI_AUTH.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import testinfra
from keydb_replies import all_links_up, master_links, parse_info, parse_role, replicas, role_from_cli
from testinfra.utils.ansible_runner import AnsibleRunner

PROJECT = Path(__file__).resolve().parents[3]
INVENTORY = str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)
RUNNER = AnsibleRunner(INVENTORY)
NODES = sorted(RUNNER.get_hosts("keydb"))
testinfra_hosts = [f"ansible://{name}?ansible_inventory={INVENTORY}" for name in NODES]

VARS = {name: RUNNER.get_variables(name) for name in NODES}
ENGINE = VARS[NODES[0]].get("keydb_engine", "keydb")
PASSWORD = VARS[NODES[0]]["keydb_password"]
PORT = int(VARS[NODES[0]].get("keydb_port", 6379))
CLI = "keydb-cli" if ENGINE == "keydb" else "redis-cli"
SERVICE = "keydb-server" if ENGINE == "keydb" else "redis-server"
PRIMARY = NODES[0]  # engine redis: the first host of the group
INITIAL = VARS[NODES[0]].get("keydb_test_initial_members", [])
KEYS_PER_WRITER = 100


def node(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


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


def wait_for(check, timeout: float = 30.0, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


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
    wait_for(lambda: not replication_problems(), timeout=30)
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
            wait_for(lambda n=name, p=pattern: count_keys(n, p) == KEYS_PER_WRITER, timeout=20)
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
            got = wait_for(lambda r=reader, k=key, v=value: cli(r, "GET", k).stdout.strip() == v, timeout=15)
            assert got, f"{key} written on {writer} not readable on {reader}"


@pytest.mark.skipif(ENGINE != "redis", reason="KeyDB active replicas accept writes on every node")
def test_redis_replicas_refuse_writes() -> None:
    for name in NODES:
        if name == PRIMARY:
            continue
        out = cli(name, "SET", "verify:replica-write", "x")
        assert "READONLY" in out.stdout + out.stderr


def test_adding_a_node_restarts_only_what_must_change() -> None:
    """Redis: a new replica needs no change on the primary or the other
    replicas, so their servers keep running (same run_id as before the join).
    KeyDB: every existing peer needs the new replicaof line, so each was
    restarted once (new run_id) and still has its data (checked above)."""
    for name in INITIAL:
        before = node(name).file("/root/keydb-test-run-id-before-join").content_string.strip()
        now = re.search(r"run_id:([0-9a-f]+)", cli(name, "INFO", "server").stdout).group(1)
        assert len(before) == 40, f"{name}: no run_id recorded before the join"
        if ENGINE == "redis":
            assert now == before, f"{name} was restarted although nothing changed for it"
        else:
            assert now != before, f"{name} did not pick up the new peer"


def ansible_playbook(*args: str) -> subprocess.CompletedProcess:
    playbook = Path(sys.executable).with_name("ansible-playbook")
    return subprocess.run(
        [str(playbook), "-i", INVENTORY, *args, str(PROJECT / "playbooks" / "keydb.yml")],
        cwd=PROJECT, capture_output=True, text=True, timeout=600, check=False,
    )


@pytest.mark.skipif(ENGINE != "redis", reason="failover by promotion concerns the Redis fallback only")
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

    refused = ansible_playbook()
    assert refused.returncode != 0
    out = refused.stdout + refused.stderr
    assert f"host(s) {promoted} run as the Redis primary since a failover" in out, out[-3000:]
    assert f"Set keydb_redis_primary: {promoted}" in out
    assert cli(promoted, "GET", key).stdout.strip() == value, "the refused run changed the promoted primary"

    moved = ansible_playbook("-e", f"keydb_redis_primary={promoted}")
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

    assert wait_for(follow_promoted, timeout=30), {n: info_replication(n) for n in NODES}
    for name in NODES:
        assert wait_for(lambda n=name: cli(n, "GET", key).stdout.strip() == value, timeout=15), name
        assert count_keys(name, f"before-join:{INITIAL[0]}:*") == KEYS_PER_WRITER, name
