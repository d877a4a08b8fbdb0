"""The keydb.conf template, rendered by ansible-playbook for 2 and 3 peers.

Each node must bind to its own cluster address and loopback, list every
other node with `replicaof` (KeyDB) and never itself, and keep the settings
the cluster relies on (password, protected mode, noeviction, persistence).
"""

from __future__ import annotations

import glob
import os
import subprocess

import pytest
import yaml
from keydb_testlib import REPO, Ansible

PASSWORD = "s3cret-for-render-test"
ENGINES = yaml.safe_load((REPO / "roles" / "keydb" / "vars" / "main.yml").read_text())["_keydb_engines"]


def _hosts(n: int) -> dict[str, dict]:
    return {f"kdb{i}": {"cluster_address": f"198.18.77.{10 + i}"} for i in range(1, n + 1)}


def _render(ansible: Ansible, hosts: dict[str, dict], **extra) -> dict[str, list[list[str]]]:
    out = ansible.dir / "rendered"
    out.mkdir()
    inventory = ansible.inventory(hosts)
    # The role's own configure.yml, with its defaults at role precedence;
    # only the output paths are redirected. The play ends right after, so
    # the "Restart keydb" handler never runs (its unit name does not exist:
    # were it to run, the play would fail).
    engine = {
        "config_file": str(out) + "/{{ inventory_hostname }}.conf",
        "group": "root",
        "service": "keydb-render-test-no-such-unit",
        "data_dir": "/var/lib/keydb-test",
        "log_file": "/var/log/keydb-test.log",
        "pid_file": "/run/keydb-test.pid",
        "cli": "/bin/false",
        "packages": [],
    }
    play = {
        "name": "render keydb.conf",
        "hosts": "keydb",
        "gather_facts": False,
        "tasks": [
            {"name": "Write the configuration",
             "ansible.builtin.include_role": {"name": "keydb", "tasks_from": "configure.yml"}},
            {"name": "Stop before handlers", "ansible.builtin.meta": "end_play"},
        ],
    }
    # Only the paths are redirected: each engine keeps its own daemonize.
    engines = {name: {**engine, "daemonize": real["daemonize"]} for name, real in ENGINES.items()}
    extra_vars = {"keydb_password": PASSWORD, "_keydb_engines": engines, **extra}
    run = ansible.run([play], inventory, extra_vars)
    assert run.ok, run.output
    configs = {}
    for host in hosts:
        lines = (out / f"{host}.conf").read_text().splitlines()
        configs[host] = [line.split() for line in lines if line.strip() and not line.startswith("#")]
    return configs


def _values(directives: list[list[str]], name: str) -> list[list[str]]:
    return [d[1:] for d in directives if d[0] == name]


def _one(directives: list[list[str]], name: str) -> list[str]:
    found = _values(directives, name)
    assert len(found) == 1, f"{name}: expected once, found {found}"
    return found[0]


@pytest.mark.parametrize("n", [2, 3])
def test_keydb_each_node_replicates_every_other_node_never_itself(ansible: Ansible, n: int) -> None:
    hosts = _hosts(n)
    configs = _render(ansible, hosts, keydb_engine="keydb")
    for host, directives in configs.items():
        own = hosts[host]["cluster_address"]
        others = {(v["cluster_address"], "6379") for h, v in hosts.items() if h != host}
        replicaof = [tuple(v) for v in _values(directives, "replicaof")]
        assert len(replicaof) == n - 1, (host, replicaof)
        assert set(replicaof) == others, (host, replicaof)
        assert all(addr != own for addr, _ in replicaof), f"{host} replicates itself"
        assert _one(directives, "bind") == [own, "127.0.0.1"]
        assert _one(directives, "active-replica") == ["yes"]
        assert _one(directives, "multi-master") == ["yes"]
        assert _one(directives, "replica-read-only") == ["no"]
        assert _one(directives, "server-threads") == ["2"]


def test_common_settings_password_protection_noeviction_persistence(ansible: Ansible) -> None:
    configs = _render(ansible, _hosts(2), keydb_engine="keydb", keydb_port=7001,
                      keydb_save=["120 5"], keydb_appendfsync="always", keydb_maxmemory="2gb")
    for directives in configs.values():
        assert _one(directives, "requirepass") == [f'"{PASSWORD}"']
        assert _one(directives, "masterauth") == [f'"{PASSWORD}"']
        assert _one(directives, "protected-mode") == ["yes"]
        assert _one(directives, "maxmemory-policy") == ["noeviction"]
        assert _one(directives, "maxmemory") == ["2gb"]
        assert _one(directives, "port") == ["7001"]
        assert _one(directives, "appendonly") == ["yes"]
        assert _one(directives, "appendfsync") == ["always"]
        assert _values(directives, "save") == [["120", "5"]]
        assert {tuple(v)[1] for v in _values(directives, "replicaof")} == {"7001"}


def test_snapshots_off_and_aof_off(ansible: Ansible) -> None:
    configs = _render(ansible, _hosts(2), keydb_save=[], keydb_appendonly=False)
    for directives in configs.values():
        assert _values(directives, "save") == [['""']]
        assert _one(directives, "appendonly") == ["no"]


def test_peer_port_and_address_come_from_each_peers_inventory(ansible: Ansible) -> None:
    hosts = _hosts(3)
    hosts["kdb2"]["keydb_port"] = 7100
    hosts["kdb3"]["keydb_bind_address"] = "198.18.78.3"
    configs = _render(ansible, hosts, keydb_engine="keydb")
    assert {tuple(v) for v in _values(configs["kdb1"], "replicaof")} == {
        ("198.18.77.12", "7100"), ("198.18.78.3", "6379")}
    assert _one(configs["kdb3"], "bind") == ["198.18.78.3", "127.0.0.1"]
    assert _one(configs["kdb2"], "port") == ["7100"]


@pytest.mark.parametrize("n", [2, 3])
def test_redis_first_host_is_primary_others_replicate_it(ansible: Ansible, n: int) -> None:
    hosts = _hosts(n)
    configs = _render(ansible, hosts, keydb_engine="redis")
    primary = "kdb1"
    assert _values(configs[primary], "replicaof") == []
    for host, directives in configs.items():
        assert _values(directives, "active-replica") == []
        assert _values(directives, "server-threads") == [], "Redis refuses server-threads"
        assert _one(directives, "masterauth") == [f'"{PASSWORD}"']
        if host != primary:
            assert _one(directives, "replicaof") == [hosts[primary]["cluster_address"], "6379"]
            assert _one(directives, "replica-read-only") == ["yes"]


def test_redis_primary_can_be_moved(ansible: Ansible) -> None:
    hosts = _hosts(3)
    configs = _render(ansible, hosts, keydb_engine="redis", keydb_redis_primary="kdb3")
    assert _values(configs["kdb3"], "replicaof") == []
    assert _one(configs["kdb1"], "replicaof") == ["198.18.77.13", "6379"]
    assert _one(configs["kdb2"], "replicaof") == ["198.18.77.13", "6379"]


def test_valkey_is_primary_and_replicas_like_redis(ansible: Ansible) -> None:
    hosts = _hosts(2)
    configs = _render(ansible, hosts, keydb_engine="valkey")
    assert _values(configs["kdb1"], "replicaof") == []
    assert _one(configs["kdb2"], "replicaof") == ["198.18.77.11", "6379"]
    assert _one(configs["kdb2"], "replica-read-only") == ["yes"]
    assert _values(configs["kdb2"], "server-threads") == []


@pytest.mark.parametrize("engine", ["keydb", "redis"])
def test_daemonize_matches_the_packaged_unit(ansible: Ansible, engine: str) -> None:
    """KeyDB's keydb-server.service is Type=forking with a PIDFile: the server
    must fork and write that file (daemonize yes), or systemd times out.
    Debian's redis-server / valkey-server units are Type=notify."""
    configs = _render(ansible, _hosts(2), keydb_engine=engine)
    for directives in configs.values():
        if engine == "keydb":
            assert _one(directives, "daemonize") == ["yes"]
            assert _one(directives, "supervised") == ["no"]
        else:
            assert _one(directives, "daemonize") == ["no"]
            assert _one(directives, "supervised") == ["systemd"]


def _keydb_debs() -> str:
    for d in [os.environ.get("HPO_KEYDB_DEBS", ""), str(REPO.parent / "shared" / "keydb-debs"),
              "/work/shared/keydb-debs"]:
        if d and glob.glob(f"{d}/keydb-server_*.deb"):
            return d
    return ""


def test_role_paths_match_keydbs_own_package() -> None:
    """The unit in the real keydb-server package names the pidfile, the
    config file and the user the role's engine table uses."""
    debs = _keydb_debs()
    if not debs:
        pytest.skip("no KeyDB packages (HPO_KEYDB_DEBS, ../shared/keydb-debs)")
    deb = sorted(glob.glob(f"{debs}/keydb-server_*.deb"))[-1]
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True).stdout
    unit = subprocess.run(["tar", "-xO", "./lib/systemd/system/keydb-server.service"], input=tar,
                          capture_output=True, check=True).stdout.decode()
    keydb = ENGINES["keydb"]
    assert "Type=forking" in unit and keydb["daemonize"] is True
    assert f"PIDFile={keydb['pid_file']}" in unit
    assert f"ExecStart=/usr/bin/keydb-server {keydb['config_file']}" in unit
    assert f"Group={keydb['group']}" in unit
    assert f"ReadWriteDirectories=-{keydb['data_dir']}" in unit
    assert f"ReadWriteDirectories=-{os.path.dirname(keydb['log_file'])}" in unit
