"""Command line: bin/testbed [--cluster NAME] up|down|status|ssh|inventory|prune."""

from __future__ import annotations

import argparse
import os
import sys
import time

from testbed import network
from testbed.base import DEFAULT_RELEASE, RELEASES
from testbed.cluster import (
    INVENTORY_DIR,
    Cluster,
    all_clusters,
    known_cluster_names,
    leftovers,
    prune_bases,
)
from testbed.errors import TestbedError
from testbed.host import STATE_DIR, log, require_commands, require_root, ssh_command

DESCRIPTION = f"""\
Local multi-node test bed: Debian nodes with real systemd, booted with
systemd-nspawn on a host bridge in 198.18.0.0/15, reachable as root over SSH.

Examples:
  bin/testbed up 3                          nodes testbed-1..testbed-3
  bin/testbed --cluster keydb up 2          nodes keydb-1, keydb-2 on their own bridge
  bin/testbed --cluster mix up a b --release b=trixie
  bin/testbed ssh testbed-1 systemctl is-system-running
  ansible-playbook -i "$(bin/testbed inventory)" site.yml
  bin/testbed down                          remove the cluster and all it made
  bin/testbed status --all --check-clean    fail if anything is left anywhere

State: {STATE_DIR}; inventories: {INVENTORY_DIR}/<cluster>.yml.
Releases: {', '.join(RELEASES)} (default {DEFAULT_RELEASE}).
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="testbed",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--cluster",
        default=os.environ.get("HPO_TESTBED_CLUSTER", "testbed"),
        help="cluster name (default: testbed, or $HPO_TESTBED_CLUSTER)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start nodes (idempotent), wait until they answer")
    up.add_argument(
        "nodes",
        nargs="+",
        help="a count N (nodes CLUSTER-1..CLUSTER-N) or node names",
    )
    up.add_argument(
        "--release",
        action="append",
        default=[],
        metavar="NODE=RELEASE",
        help=f"build NODE from another Debian release ({', '.join(RELEASES)}); repeatable",
    )

    down = sub.add_parser("down", help="stop and remove the cluster: nodes, mounts, bridge, NAT")
    down.add_argument(
        "--all",
        action="store_true",
        help="remove every test bed cluster and leftover on this host (CI starts with this)",
    )

    status = sub.add_parser("status", help="show the cluster, or everything with --all")
    status.add_argument("--all", action="store_true", help="all clusters and leftovers")
    status.add_argument(
        "--check-clean",
        action="store_true",
        help="exit 1 if any test bed node, mount, bridge or NAT rule exists",
    )
    status.add_argument(
        "--only",
        metavar="NAME,...",
        help="with --check-clean: look only at these clusters (others may be in use)",
    )

    crash = sub.add_parser("crash", help="cut nodes' power: link down, then every process killed"
                           " (no orderly shutdown); 'up' boots them again")
    crash.add_argument("nodes", nargs="+", help="node names")

    ssh = sub.add_parser("ssh", help="ssh to a node as root (optionally run a command)")
    ssh.add_argument("node")
    ssh.add_argument("remote_command", nargs=argparse.REMAINDER)

    sub.add_parser("inventory", help="print the path of the cluster's Ansible inventory")
    sub.add_parser("prune", help="delete base images that no node uses (outdated recipes)")
    return parser.parse_args(argv)


def node_names(cluster: str, words: list[str]) -> list[str]:
    if len(words) == 1 and words[0].isdigit():
        count = int(words[0])
        if not 1 <= count <= 50:
            raise TestbedError(f"node count must be between 1 and 50, got {count}")
        return [f"{cluster}-{i}" for i in range(1, count + 1)]
    return words


def parse_releases(pairs: list[str]) -> dict[str, str]:
    releases = {}
    for pair in pairs:
        node, sep, release = pair.partition("=")
        if not sep or not node or not release:
            raise TestbedError(f"--release expects NODE=RELEASE, got {pair!r}")
        releases[node] = release
    return releases


def cmd_up(args: argparse.Namespace) -> int:
    cluster = Cluster.load(args.cluster)
    names = node_names(cluster.name, args.nodes)
    started = time.monotonic()
    cluster.up(names, parse_releases(args.release))
    log(f"{len(names)} node(s) up in {time.monotonic() - started:.1f}s; "
        f"inventory: {cluster.inventory_path}")
    print(cluster.inventory_path)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    names = known_cluster_names() if args.all else [args.cluster]
    for name in names:
        Cluster.load(name).down()
    return 0


def cmd_crash(args: argparse.Namespace) -> int:
    cluster = Cluster.load(args.cluster)
    for name in args.nodes:
        if name not in cluster.nodes:
            raise TestbedError(f"cluster {cluster.name} has no node {name}")
        cluster.node(name).crash()
        log(f"{name}: power cut (link down, processes killed)")
    return 0


def show_cluster(cluster: Cluster) -> None:
    print(f"cluster {cluster.name}: bridge {network.bridge_name(cluster.index)}, "
          f"network {network.subnet(cluster.index)}")
    for name in sorted(cluster.nodes, key=lambda n: int(cluster.nodes[n]["slot"])):
        node = cluster.node(name)
        state = node.system_state() if node.is_running() else "stopped"
        print(f"  {name:<24} {node.address:<16} {node.release:<10} {state}")


def cmd_status(args: argparse.Namespace) -> int:
    if not args.all and not args.check_clean:
        cluster = Cluster.load(args.cluster)
        if not cluster.state_file.exists():
            print(f"cluster {cluster.name}: not up")
            return 0
        show_cluster(cluster)
        return 0
    only = [n for n in (args.only or "").split(",") if n] or None
    for cluster in all_clusters():
        if only is None or cluster.name in only:
            show_cluster(cluster)
    left = leftovers(only)
    anything = False
    for kind, items in left.items():
        print(f"{kind}: {len(items)}")
        for item in items:
            print(f"  {item}")
        anything = anything or bool(items)
    if args.check_clean and anything:
        print("NOT CLEAN: test bed resources are left (see above); "
              "'bin/testbed --cluster NAME down' removes them", file=sys.stderr)
        return 1
    if not anything:
        scope = f" of {', '.join(only)}" if only else ""
        print(f"clean: no test bed node, mount, bridge or NAT rule{scope} left")
    return 0


def cmd_ssh(args: argparse.Namespace) -> int:
    cluster = Cluster.load(args.cluster)
    if args.node not in cluster.nodes:
        known = ", ".join(sorted(cluster.nodes)) or "none (run 'up' first)"
        raise TestbedError(f"no node {args.node!r} in cluster {cluster.name}; nodes: {known}")
    argv = ssh_command(cluster.node(args.node).address, args.remote_command)
    if args.remote_command:
        argv.insert(1, "-T")
    sys.stdout.flush()
    os.execvp(argv[0], argv)
    return 1  # not reached


def cmd_inventory(args: argparse.Namespace) -> int:
    cluster = Cluster.load(args.cluster)
    if not cluster.state_file.exists():
        raise TestbedError(f"cluster {cluster.name} is not up; run 'bin/testbed up N' first")
    print(cluster.write_inventory())
    return 0


def cmd_prune(_args: argparse.Namespace) -> int:
    for path in prune_bases():
        log(f"removed {path}")
    return 0


COMMANDS = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "ssh": cmd_ssh,
    "crash": cmd_crash,
    "inventory": cmd_inventory,
    "prune": cmd_prune,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        require_root()
        require_commands()
        return COMMANDS[args.command](args)
    except TestbedError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("testbed: interrupted; 'bin/testbed down' cleans up", file=sys.stderr)
        return 130
