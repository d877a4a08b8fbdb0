"""Verifier of the default scenario: real systemd, and a working bridge."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from testinfra.utils.ansible_runner import AnsibleRunner

# Molecule's inventory directory: its own hosts file plus the test bed's
# variables (cluster_address), copied there by molecule/_shared/create.yml.
INVENTORY = str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)
RUNNER = AnsibleRunner(INVENTORY)
NODES = RUNNER.get_hosts("smoke")
testinfra_hosts = [f"ansible://{name}?ansible_inventory={INVENTORY}" for name in NODES]


def address_of(name: str) -> str:
    return RUNNER.get_variables(name)["cluster_address"]


def test_two_nodes() -> None:
    assert sorted(NODES) == ["default-1", "default-2"]


def test_systemd_is_pid1_and_running(host) -> None:
    assert host.run("cat /proc/1/comm").stdout.strip() == "systemd"
    state = host.run("systemctl is-system-running").stdout.strip()
    failed = host.run("systemctl --failed --no-legend --plain").stdout
    assert state == "running", f"system state {state}; failed units:\n{failed}"


def test_converge_marker(host) -> None:
    name = host.backend.get_hostname()
    marker = host.file("/etc/hpo-testbed-smoke")
    assert marker.content_string == f"{name} {address_of(name)}\n"


def test_reaches_peers_over_the_bridge(host) -> None:
    me = host.backend.get_hostname()
    own_net = ipaddress.ip_interface(f"{address_of(me)}/24").network
    assert own_net.subnet_of(ipaddress.ip_network("198.18.0.0/15"))
    assert host.interface("host0").addresses[0] == address_of(me)
    peers = [n for n in NODES if n != me]
    assert peers
    for peer in peers:
        address = address_of(peer)
        assert ipaddress.ip_address(address) in own_net
        route = host.run(f"ip -4 route get {address}").stdout
        assert "dev host0" in route and " via " not in route, route
        assert host.run(f"ping -c 1 -W 2 {address}").rc == 0
        # sshd of the peer answers on the bridge (a TCP handshake, real SSH banner)
        banner = host.run(
            "python3 -c 'import socket,sys; s=socket.create_connection((sys.argv[1], 22), 3);"
            " print(s.recv(64).decode())' " + address
        )
        assert banner.rc == 0 and banner.stdout.startswith("SSH-2.0-"), banner.stderr


def test_nodes_have_distinct_identities() -> None:
    ids = {}
    for name in NODES:
        node = RUNNER.get_host(name)
        ids[name] = (
            node.file("/etc/machine-id").content_string.strip(),
            node.run("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1],
            node.run("hostname").stdout.strip(),
        )
        assert ids[name][2] == name
    machine_ids = [v[0] for v in ids.values()]
    host_keys = [v[1] for v in ids.values()]
    assert len(set(machine_ids)) == len(NODES)
    assert len(set(host_keys)) == len(NODES)
