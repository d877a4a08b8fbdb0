"""The host firewall's checks (roles/firewall/tasks/preflight.yml), no nodes:
the real playbooks/ray.yml with a local connection, firewall checks only
(--tags firewall_preflight, --check as a safety net). The table itself is
tested on real nodes by the security scenario."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from test_addresses import inventory, playbook


def checks(tmp_path: Path, hostvars: dict | None = None, allvars: dict | None = None,
           drop_groups: tuple[str, ...] = ()):
    inv = inventory(tmp_path)
    data = yaml.safe_load(inv.read_text())
    for group in drop_groups:
        del data["all"]["children"][group]
    for host, values in (hostvars or {}).items():
        data["all"]["hosts"][host].update(values)
    data["all"]["vars"].update(allvars or {})
    inv.write_text(yaml.safe_dump(data))
    return playbook(tmp_path, inv, "playbooks/ray.yml", "--check", "--tags", "firewall_preflight",
                    "-e", "ansible_become=false")


def test_a_cluster_of_ipv4_members_passes(tmp_path: Path) -> None:
    run = checks(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:]
    # the checks ran on every host with ports (a: head, b: worker + store, c: worker)
    assert re.search(r"TASK \[firewall : Check the firewall leaves the SSH port alone\]", run.stdout)
    assert re.search(r"^ok: \[c\]", run.stdout, re.M)


def test_a_ray_only_inventory_passes(tmp_path: Path) -> None:
    # no keydb (nor optuna_workers) group at all, as the ray scenario's inventory
    run = checks(tmp_path, drop_groups=("keydb", "optuna_workers"))
    assert run.returncode == 0, run.stdout[-3000:]
    assert re.search(r"^ok: \[c\]", run.stdout, re.M)


@pytest.mark.parametrize(("hostvars", "allvars", "message"), [
    ({"c": {"cluster_address": "fd00::3"}}, {},
     'c: cluster_address holds "fd00::3", which is not an IPv4 address'),
    ({"c": {"ray_node_ip": "node-c.example"}}, {},
     'c: ray_node_ip holds "node-c.example", which is not an IPv4 address'),
    ({}, {"firewall_workstations": ["workstation.example"]},
     'firewall_workstations holds "workstation.example"'),
    ({"b": {"ansible_port": 6340}}, {},
     "b: Ansible reaches this host on port 6340 (ansible_port), which the host firewall would close"),
    ({"c": {"ansible_port": 20022}}, {},
     "one of this host's Ray or store ports (20000-20999)"),
])
def test_a_bad_input_is_refused_naming_the_host_and_the_variable(tmp_path: Path, hostvars, allvars,
                                                                  message) -> None:
    run = checks(tmp_path, hostvars, allvars)
    assert run.returncode != 0
    assert message in " ".join(run.stdout.split()), run.stdout[-3000:]


def test_without_the_firewall_an_ipv6_member_is_not_its_concern(tmp_path: Path) -> None:
    run = checks(tmp_path, {"c": {"cluster_address": "fd00::3"}}, {"firewall_enabled": False})
    assert run.returncode == 0 and "not an IPv4 address" not in run.stdout, run.stdout[-3000:]
