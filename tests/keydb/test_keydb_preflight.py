"""The keydb role's preflight: bad input stops before anything changes, with a
message that names the host and the variable to fix. Runs the role's real
preflight.yml against this machine (connection local)."""

from __future__ import annotations

import pytest
from keydb_testlib import Ansible, role_play

GOOD_PASSWORD = "0123456789abcdef-good"

# Facts of an Ubuntu 24.04 host, set as real (cacheable) facts before the
# role runs, so that the role's own fact-derived default for keydb_apt_suite
# is what is checked.
NOBLE_FACTS = {
    "distribution": "Ubuntu",
    "distribution_release": "noble",
    "distribution_version": "24.04",
    "os_family": "Debian",
    "all_ipv4_addresses": ["198.18.77.11"],
    "all_ipv6_addresses": [],
    "cacheable": True,
}


def _own_address_play() -> list[dict]:
    """Pre-tasks: make this machine's first IPv4 address the cluster address."""
    return [
        {"name": "Read network facts", "ansible.builtin.setup": {"gather_subset": ["min", "network"]}},
        {"name": "Use a real address of this machine",
         "ansible.builtin.set_fact": {"cluster_address": "{{ ansible_facts['all_ipv4_addresses'][0] }}"}},
    ]


def _preflight(ansible: Ansible, extra: dict, hosts: dict | None = None, pre_tasks: list | None = None):
    inventory = ansible.inventory(hosts or {"kdbtest": {"cluster_address": "198.18.77.11"}})
    return ansible.run([role_play("preflight.yml", pre_tasks=pre_tasks)], inventory, extra)


def test_valid_input_passes(ansible: Ansible) -> None:
    run = _preflight(ansible, {"keydb_engine": "redis", "keydb_password": GOOD_PASSWORD},
                     pre_tasks=_own_address_play())
    assert run.ok, run.output
    assert run.changed() == 0, run.output


def test_empty_password_is_refused_naming_host_and_variable(ansible: Ansible) -> None:
    run = _preflight(ansible, {"keydb_engine": "redis", "keydb_password": ""})
    assert not run.ok
    assert "host kdbtest: keydb_password is empty" in run.output
    assert "keydb_allow_empty_password" in run.output


def test_empty_password_passes_when_explicitly_allowed(ansible: Ansible) -> None:
    run = _preflight(ansible, {"keydb_engine": "redis", "keydb_password": "",
                               "keydb_allow_empty_password": True},
                     pre_tasks=_own_address_play())
    assert run.ok, run.output


@pytest.mark.parametrize("password", ['has space', 'quote"inside', "back\\slash", "single'quote"])
def test_password_the_config_cannot_carry_is_refused(ansible: Ansible, password: str) -> None:
    run = _preflight(ansible, {"keydb_engine": "redis", "keydb_password": password})
    assert not run.ok
    assert "keydb_password contains whitespace, a quote or a backslash" in run.output
    assert password not in run.output, "the password must not be printed"


def test_peer_without_cluster_address_is_named(ansible: Ansible) -> None:
    hosts = {"kdbtest": {"cluster_address": "198.18.77.11"}, "kdbpeer": {}}
    run = ansible.run([role_play("preflight.yml", hosts="kdbtest")], ansible.inventory(hosts),
                      {"keydb_engine": "redis", "keydb_password": GOOD_PASSWORD})
    assert not run.ok
    assert "host kdbpeer (group 'keydb'): cluster_address is not set" in run.output


def test_duplicate_addresses_are_refused(ansible: Ansible) -> None:
    hosts = {"kdbtest": {"cluster_address": "198.18.77.11"}, "kdbtwin": {"cluster_address": "198.18.77.11"}}
    run = ansible.run([role_play("preflight.yml", hosts="kdbtest")], ansible.inventory(hosts),
                      {"keydb_engine": "redis", "keydb_password": GOOD_PASSWORD})
    assert not run.ok
    assert "share an address and port" in run.output
    assert "kdbtest=198.18.77.11" in run.output and "kdbtwin=198.18.77.11" in run.output


def test_bind_address_not_on_this_host_is_refused(ansible: Ansible) -> None:
    # 198.18.77.11 (inside the test range) is not configured on this machine.
    run = _preflight(ansible, {"keydb_engine": "redis", "keydb_password": GOOD_PASSWORD})
    assert not run.ok
    assert ("host kdbtest: keydb_bind_address / cluster_address '198.18.77.11' "
            "is not an address of this host") in run.output


def test_noble_is_refused_for_keydb(ansible: Ansible) -> None:
    pre = [{"name": "Pretend to be Ubuntu noble", "ansible.builtin.set_fact": NOBLE_FACTS}]
    run = _preflight(ansible, {"keydb_engine": "keydb", "keydb_password": GOOD_PASSWORD}, pre_tasks=pre)
    assert not run.ok
    assert "host kdbtest: KeyDB's apt repository has no suite 'noble' (Ubuntu 24.04)" in run.output
    assert "keydb_engine: redis" in run.output


def test_noble_is_fine_for_the_redis_fallback(ansible: Ansible) -> None:
    pre = [{"name": "Pretend to be Ubuntu noble", "ansible.builtin.set_fact": NOBLE_FACTS}]
    run = _preflight(ansible, {"keydb_engine": "redis", "keydb_password": GOOD_PASSWORD}, pre_tasks=pre)
    assert run.ok, run.output


def test_jammy_is_served(ansible: Ansible) -> None:
    facts = dict(NOBLE_FACTS, distribution_release="jammy", distribution_version="22.04")
    pre = [{"name": "Pretend to be Ubuntu jammy", "ansible.builtin.set_fact": facts}]
    run = _preflight(ansible, {"keydb_engine": "keydb", "keydb_password": GOOD_PASSWORD}, pre_tasks=pre)
    assert run.ok, run.output


def test_host_outside_the_group_is_refused(ansible: Ansible) -> None:
    run = ansible.run([role_play("preflight.yml")], ansible.inventory({"kdbtest": {"cluster_address": "198.18.77.11"}}),
                      {"keydb_engine": "redis", "keydb_password": GOOD_PASSWORD, "keydb_group": "nosuchgroup"})
    assert not run.ok
    assert "host kdbtest: not a member of the inventory group 'nosuchgroup'" in run.output


def test_full_role_on_a_host_without_cluster_address_names_it(ansible: Ansible) -> None:
    """Through the role's main entry point (argument validation first)."""
    play = {"name": "keydb role", "hosts": "keydb", "gather_facts": True, "roles": ["keydb"]}
    run = ansible.run([play], ansible.inventory({"nocluster": {}}),
                      {"keydb_engine": "redis", "keydb_password": GOOD_PASSWORD})
    assert not run.ok
    assert "fatal: [nocluster]" in run.output
    assert "'cluster_address' is undefined" in run.output
