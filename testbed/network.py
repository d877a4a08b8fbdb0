"""Host networking for a cluster: one bridge, one /24, NAT to the outside.

Every cluster gets 198.18.<index>.0/24 (inside 198.18.0.0/15, the range
reserved for network tests). The host is .1 on bridge ``hpotb<index>``; nodes
take .11 upwards. Rules carry the comment ``hpo-testbed:<cluster>`` so that
``down`` and ``status`` find them even when the cluster's state file is gone.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from testbed.host import run

NETWORK_PREFIX = "198.18"
FIRST_NODE_HOST = 11
BRIDGE_PREFIX = "hpotb"
RULE_COMMENT_PREFIX = "hpo-testbed:"


def subnet(index: int) -> str:
    return f"{NETWORK_PREFIX}.{index}.0/24"


def host_address(index: int) -> str:
    return f"{NETWORK_PREFIX}.{index}.1"


def node_address(index: int, slot: int) -> str:
    return f"{NETWORK_PREFIX}.{index}.{FIRST_NODE_HOST + slot}"


def bridge_name(index: int) -> str:
    return f"{BRIDGE_PREFIX}{index}"


def networks_in_use() -> list[ipaddress.IPv4Network]:
    """IPv4 networks the host already routes (so we never overlap them)."""
    proc = run(["ip", "-4", "-o", "route", "show", "table", "all"], check=False)
    found = []
    for line in proc.stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("default", "broadcast", "local", "unreachable"):
            continue
        try:
            found.append(ipaddress.ip_network(first, strict=False))
        except ValueError:
            continue
    return found


def pick_index(taken: set[int]) -> int:
    """The lowest free /24 index: not used by a cluster, not routed already."""
    routed = networks_in_use()
    for index in range(1, 255):
        if index in taken:
            continue
        candidate = ipaddress.ip_network(subnet(index))
        if any(candidate.overlaps(net) for net in routed if net.prefixlen > 0):
            continue
        return index
    raise RuntimeError("no free /24 left in 198.18.0.0/16 for a new cluster")


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def bridge_alias(name: str) -> str:
    """The label a bridge carries ('' if none)."""
    shown = run(["ip", "-o", "link", "show", "dev", name], check=False).stdout
    return shown.split(" alias ", 1)[1].strip() if " alias " in shown else ""


def ensure_bridge(index: int, cluster: str) -> None:
    name = bridge_name(index)
    label = f"{RULE_COMMENT_PREFIX}{cluster}"
    if not link_exists(name):
        run(["ip", "link", "add", "name", name, "type", "bridge"])
    if bridge_alias(name) != label:
        run(["ip", "link", "set", "dev", name, "alias", label])
    address = f"{host_address(index)}/24"
    shown = run(["ip", "-4", "-o", "addr", "show", "dev", name]).stdout
    if address not in shown:
        run(["ip", "addr", "add", address, "dev", name])
    run(["ip", "link", "set", "dev", name, "up"])


def delete_bridge(name: str) -> None:
    if link_exists(name):
        run(["ip", "link", "delete", "dev", name])


def testbed_bridges() -> list[str]:
    proc = run(["ip", "-o", "link", "show", "type", "bridge"], check=False)
    names = []
    for line in proc.stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(BRIDGE_PREFIX):
            names.append(name)
    return names


def _nat_rules(cluster: str, index: int) -> list[tuple[str, str, list[str]]]:
    """(table, chain, rule) triples for one cluster."""
    comment = ["-m", "comment", "--comment", f"{RULE_COMMENT_PREFIX}{cluster}"]
    bridge = bridge_name(index)
    return [
        ("nat", "POSTROUTING",
         ["-s", subnet(index), "!", "-o", bridge, "-j", "MASQUERADE", *comment]),
        ("filter", "FORWARD", ["-i", bridge, "-j", "ACCEPT", *comment]),
        ("filter", "FORWARD", ["-o", bridge, "-j", "ACCEPT", *comment]),
    ]


def ensure_nat(cluster: str, index: int) -> None:
    """Let nodes reach the package registries through the host (MASQUERADE)."""
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    for table, chain, rule in _nat_rules(cluster, index):
        present = run(["iptables", "-w", "-t", table, "-C", chain, *rule], check=False)
        if present.returncode != 0:
            run(["iptables", "-w", "-t", table, "-I", chain, "1", *rule])


def testbed_rules(cluster: str | None = None) -> list[tuple[str, str]]:
    """(table, rule-spec) of rules made by the test bed, for one or all clusters."""
    wanted = f"{RULE_COMMENT_PREFIX}{cluster}" if cluster else RULE_COMMENT_PREFIX
    found = []
    for table in ("nat", "filter"):
        proc = run(["iptables", "-w", "-t", table, "-S"], check=False)
        for line in proc.stdout.splitlines():
            if not line.startswith("-A "):
                continue
            marker = line.split("--comment", 1)[1].split()[0].strip('"') if (
                "--comment" in line) else ""
            if cluster is None and marker.startswith(RULE_COMMENT_PREFIX):
                found.append((table, line))
            elif cluster is not None and marker == wanted:
                found.append((table, line))
    return found


def delete_nat(cluster: str) -> None:
    for table, line in testbed_rules(cluster):
        spec = line.split()  # "-A CHAIN ..." -> "-D CHAIN ..."
        spec[0] = "-D"
        spec = [part.strip('"') for part in spec]
        run(["iptables", "-w", "-t", table, *spec])
