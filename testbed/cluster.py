"""A cluster: named nodes on one bridge, its state file and its inventory.

State: ``/var/lib/hpo-testbed/clusters/<name>/cluster.json`` records the
network index and, per node, its slot (address) and release. It is written
before anything is created, so ``down`` can undo a half-finished ``up``;
``down`` also searches by name (processes, mounts, rule comments, bridge
alias) and so works even without the state file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbed import network
from testbed.base import DEFAULT_RELEASE, RELEASES, base_dir, ensure_base
from testbed.errors import TestbedError
from testbed.host import (
    REPO_DIR,
    STATE_DIR,
    file_lock,
    log,
    mounts_under,
    nspawn_processes,
    orphan_inits,
    processes_with,
    processes_with_prefix,
    raise_kernel_limits,
    require_free_space,
    run,
    send_signal,
    ssh_key_path,
)
from testbed.nodes import Node, kill_orphans, stop_nspawn
from testbed.pypi_cache import PORT as PYPI_CACHE_PORT

CLUSTERS_DIR = STATE_DIR / "clusters"
PYPI_CACHE_DIR = STATE_DIR / "pypi-cache"
INVENTORY_DIR = REPO_DIR / "inventory" / "testbed" / "generated"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
BOOT_TIMEOUT = 120.0
NODE_DISK_MIB = 300


def check_name(kind: str, name: str) -> str:
    if not NAME_RE.match(name):
        raise TestbedError(
            f"invalid {kind} name {name!r}: use lowercase letters, digits and '-', "
            "starting with a letter or digit, at most 41 characters"
        )
    return name


@dataclass
class Cluster:
    name: str
    index: int = 0
    nodes: dict[str, dict[str, object]] = field(default_factory=dict)

    # ---- paths and persistence ----------------------------------------

    @property
    def directory(self) -> Path:
        return CLUSTERS_DIR / self.name

    @property
    def state_file(self) -> Path:
        return self.directory / "cluster.json"

    @property
    def inventory_path(self) -> Path:
        return INVENTORY_DIR / f"{self.name}.yml"

    @property
    def ray_token_path(self) -> Path:
        return self.directory / "ray_auth_token"

    def ray_auth_token(self) -> str:
        """The cluster's Ray token: made on first use (root-only file), kept until `down`."""
        path = self.ray_token_path
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32))
        return path.read_text().strip()

    @property
    def lock_path(self) -> Path:
        return CLUSTERS_DIR / f".{self.name}.lock"

    @classmethod
    def load(cls, name: str) -> Cluster:
        cluster = cls(check_name("cluster", name))
        if cluster.state_file.exists():
            data = json.loads(cluster.state_file.read_text())
            cluster.index = int(data["index"])
            cluster.nodes = data["nodes"]
        return cluster

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"index": self.index, "nodes": self.nodes}, indent=2))
        tmp.replace(self.state_file)

    def node(self, name: str) -> Node:
        record = self.nodes[name]
        return Node(
            name=name,
            directory=self.directory / "nodes" / name,
            address=network.node_address(self.index, int(record["slot"])),
            gateway=network.host_address(self.index),
            bridge=network.bridge_name(self.index),
            release=str(record["release"]),
            base=Path(str(record["base"])),
        )

    # ---- up -------------------------------------------------------------

    def up(self, names: list[str], releases: dict[str, str]) -> None:
        for name in names:
            check_name("node", name)
        unknown = set(releases) - set(names)
        if unknown:
            raise TestbedError(f"--release names nodes not being started: {sorted(unknown)}")
        for name, release in releases.items():
            if release not in RELEASES:
                raise TestbedError(
                    f"node {name}: unknown release {release!r} (known: {', '.join(RELEASES)})"
                )
        for other in all_clusters():
            clash = sorted(set(names) & set(other.nodes)) if other.name != self.name else []
            if clash:
                raise TestbedError(
                    f"node name(s) {', '.join(clash)} already used by cluster {other.name}: "
                    "node names must be unique on this host (each names its network link)"
                )
        new = [n for n in names if n not in self.nodes]
        if new:
            require_free_space(STATE_DIR, NODE_DISK_MIB * len(new), f"{len(new)} new node(s)")
        with file_lock(self.lock_path, f"cluster {self.name}"):
            self.reload()
            self._allocate(names, releases)
            network.ensure_bridge(self.index, self.name)
            network.ensure_nat(self.name, self.index)
            raise_kernel_limits()
            self._ensure_pypi_cache()
            public_key = ssh_key_path().with_suffix(".pub").read_text()
            hosts = {n: self.node(n).address for n in self.nodes}
            booted: dict[str, Node] = {}
            for name in names:
                node = booted[name] = self.node(name)
                node.mount()
                node.personalize(public_key, hosts)
                if node.is_running():
                    log(f"{name}: already running at {node.address}")
                else:
                    log(f"{name}: booting ({node.release}) at {node.address}")
                    node.boot()
            # other nodes of the cluster learn the new names too
            for name in set(self.nodes) - set(names):
                other = self.node(name)
                if other.rootfs in mounts_under(other.rootfs):
                    other.personalize(public_key, hosts)
            self._wait(list(booted.values()))
            self.write_inventory()

    def _allocate(self, names: list[str], releases: dict[str, str]) -> None:
        """Record the network and every node before creating anything."""
        CLUSTERS_DIR.mkdir(parents=True, exist_ok=True)
        with file_lock(CLUSTERS_DIR / ".allocate.lock", "network allocation"):
            if not self.index:
                taken = {c.index for c in all_clusters()}
                self.index = network.pick_index(taken)
                self.save()
        for name in names:
            record = self.nodes.get(name)
            release = releases.get(name, str(record["release"]) if record else DEFAULT_RELEASE)
            if record and record["release"] != release:
                raise TestbedError(
                    f"node {name} exists with release {record['release']}, not {release}; "
                    f"run 'bin/testbed --cluster {self.name} down' first"
                )
            base = ensure_base(release)
            if record is None:
                used = {int(r["slot"]) for r in self.nodes.values()}
                slot = _node_slot(name, self.name, used)
                self.nodes[name] = {"slot": slot, "release": release, "base": str(base)}
                self.save()
            elif not Path(str(record["base"])).exists():
                # the base this node was made from is gone: start the node afresh
                self._remove_node_files(name)
                record["base"] = str(base)
                self.save()

    # ---- the PyPI cache the nodes use (see pypi_cache.py) ----------------

    @property
    def _cache_marker(self) -> str:
        return f"--cluster-dir={self.directory}"

    def _ensure_pypi_cache(self) -> None:
        if processes_with(self._cache_marker):
            return
        address = network.host_address(self.index)
        log_file = open(self.directory / "pypi-cache.log", "ab")  # noqa: SIM115  handed to the child
        with log_file:
            subprocess.Popen(  # noqa: S603  fixed argv
                [sys.executable, "-m", "testbed.pypi_cache", "--listen", address,
                 "--port", str(PYPI_CACHE_PORT), "--cache", str(PYPI_CACHE_DIR),
                 self._cache_marker],
                cwd=REPO_DIR, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((address, PYPI_CACHE_PORT), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise TestbedError(
            f"the PyPI cache for the nodes did not start on {address}:{PYPI_CACHE_PORT}; "
            f"see {self.directory / 'pypi-cache.log'}"
        )

    def _stop_pypi_cache(self) -> None:
        for pid in processes_with(self._cache_marker):
            send_signal(pid, signal.SIGTERM)

    def _wait(self, nodes: list[Node]) -> None:
        """Wait until systemd in every node is up and SSH answers."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        pending = {n.name: n for n in nodes}
        while pending:
            for name, node in list(pending.items()):
                if not node.is_running():
                    reason = node.exit_reason()
                    raise TestbedError(
                        f"node {name} exited while booting"
                        f"{f' (systemd-nspawn: {reason})' if reason else ''}. "
                        f"Its log:\n{node.journal_tail()}"
                    )
                state = node.system_state()
                if state in ("running", "degraded") and node.ssh_ok():
                    if state == "degraded":
                        log(f"{name}: degraded; failed units:\n{node.failed_units()}")
                    else:
                        log(f"{name}: running, SSH answers at {node.address}")
                    del pending[name]
            if pending and time.monotonic() > deadline:
                name, node = next(iter(pending.items()))
                raise TestbedError(
                    f"node {name} did not come up within {BOOT_TIMEOUT:.0f}s "
                    f"(systemd: {node.system_state()}, SSH: "
                    f"{'ok' if node.ssh_ok() else 'no answer'}). Journal:\n"
                    f"{node.journal_tail()}"
                )
            if pending:
                time.sleep(0.5)

    def write_inventory(self) -> Path:
        key = ssh_key_path()
        lines = [
            "# Generated by bin/testbed: do not edit. Removed by 'bin/testbed down'.",
            f"# cluster {self.name}, bridge {network.bridge_name(self.index)}, "
            f"network {network.subnet(self.index)}",
            "all:",
            "  children:",
            "    testbed_nodes:",
            "      vars:",
            "        ansible_user: root",
            f"        ansible_ssh_private_key_file: {key}",
            "        ansible_ssh_common_args: >-",
            "          -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "          -o LogLevel=ERROR",
            "        ansible_python_interpreter: /usr/bin/python3",
            f"        testbed_cluster: {self.name}",
            "        # Made by bin/testbed for this cluster (the roles refuse Ray without a",
            f"        # token); also in {self.ray_token_path}.",
            f"        ray_auth_token: {json.dumps(self.ray_auth_token())}",
            "        # This machine (its address on the bridge) opens the dashboard: the",
            "        # host firewall lets it reach the dashboard and Ray Client ports only.",
            f"        firewall_workstations: [{network.host_address(self.index)}]",
            "      hosts:",
        ]
        for name in sorted(self.nodes, key=lambda n: int(self.nodes[n]["slot"])):
            node = self.node(name)
            lines += [
                f"        {name}:",
                f"          ansible_host: {node.address}",
                f"          cluster_address: {node.address}",
                f"          testbed_release: {node.release}",
            ]
        INVENTORY_DIR.mkdir(parents=True, exist_ok=True)
        # It holds the cluster's Ray token: root only.
        fd = os.open(self.inventory_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(lines) + "\n")
        os.chmod(self.inventory_path, 0o600)
        return self.inventory_path

    # ---- down -----------------------------------------------------------

    def reload(self) -> None:
        """Re-read the state file (call with the cluster lock held: another
        command may have changed or removed the cluster meanwhile)."""
        fresh = Cluster.load(self.name)
        self.index, self.nodes = fresh.index, fresh.nodes

    def down(self) -> None:
        with file_lock(self.lock_path, f"cluster {self.name}"):
            self.reload()
            pids = list(nspawn_processes(self.directory))
            if pids:
                log(f"stopping {len(pids)} node(s) of {self.name}")
                stop_nspawn(pids, grace=10.0)
            self._stop_pypi_cache()
            orphans = kill_orphans(self.directory)
            if orphans:
                log(f"killed {len(orphans)} node(s) whose systemd-nspawn had died")
            for mount_point in mounts_under(self.directory):
                if run(["umount", str(mount_point)], check=False).returncode != 0:
                    run(["umount", "--lazy", str(mount_point)])
            network.delete_nat(self.name)
            # only bridges labelled with this cluster's name: the index may
            # already belong to another cluster if our state is stale
            for bridge in bridges_of(self.name):
                network.delete_bridge(bridge)
            # a bridge made by an 'up' killed before it could label it
            unlabelled = network.bridge_name(self.index) if self.index else ""
            if unlabelled and network.link_exists(unlabelled) and not network.bridge_alias(unlabelled):
                network.delete_bridge(unlabelled)
            left = mounts_under(self.directory)
            if left:
                raise TestbedError(f"still mounted, not removing {self.directory}: {left}")
            if self.directory.exists():
                shutil.rmtree(self.directory)
            self.inventory_path.unlink(missing_ok=True)
        self.lock_path.unlink(missing_ok=True)
        log(f"cluster {self.name} removed")

    def _remove_node_files(self, name: str) -> None:
        directory = self.directory / "nodes" / name
        stop_nspawn(list(nspawn_processes(directory)), grace=10.0)
        kill_orphans(directory)
        for mount_point in mounts_under(directory):
            run(["umount", str(mount_point)])
        if directory.exists():
            shutil.rmtree(directory)


def _node_slot(node: str, cluster: str, used: set[int]) -> int:
    """Slot for a new node: NAME-k gets k-1 (address .10+k) when free."""
    match = re.fullmatch(rf"{re.escape(cluster)}-(\d+)", node)
    if match and 0 < int(match.group(1)) <= 200 and int(match.group(1)) - 1 not in used:
        return int(match.group(1)) - 1
    for slot in range(0, 200):
        if slot not in used:
            return slot
    raise TestbedError("no free address left in this cluster (200 nodes)")


def bridges_of(cluster: str) -> list[str]:
    """Bridges whose alias names this cluster (found even without state)."""
    wanted = f"{network.RULE_COMMENT_PREFIX}{cluster}"
    return [b for b in network.testbed_bridges() if network.bridge_alias(b) == wanted]


def all_clusters() -> list[Cluster]:
    if not CLUSTERS_DIR.exists():
        return []
    return [
        Cluster.load(p.name)
        for p in sorted(CLUSTERS_DIR.iterdir())
        if p.is_dir() and NAME_RE.match(p.name)
    ]


def known_cluster_names() -> list[str]:
    """Every cluster name the host shows a trace of: state directories,
    bridge labels, NAT rule comments, generated inventories."""
    names = {c.name for c in all_clusters()}
    prefix = network.RULE_COMMENT_PREFIX
    for bridge in network.testbed_bridges():
        label = network.bridge_alias(bridge)
        if label.startswith(prefix):
            names.add(label[len(prefix):])
    for _table, rule in network.testbed_rules():
        comment = rule.split("--comment", 1)[1].split()[0].strip('"')
        names.add(comment[len(prefix):])
    if INVENTORY_DIR.exists():
        names |= {p.stem for p in INVENTORY_DIR.glob("*.yml")}
    return sorted(n for n in names if NAME_RE.match(n))


def leftovers(names: list[str] | None = None) -> dict[str, list[str]]:
    """What the test bed still has on the host, by kind: all of it, or only
    what belongs to the clusters `names` (other engineers' clusters may run
    beside a test on a shared machine)."""
    if names is None:
        return {
            "clusters": [c.name for c in all_clusters()],
            "nodes": [f"pid {pid}: {d}" for pid, d in sorted(nspawn_processes(CLUSTERS_DIR).items())]
        + [f"pid {pid} (orphan): {d}" for pid, d in sorted(orphan_inits(CLUSTERS_DIR).items())],
            "mounts": [str(m) for m in mounts_under(CLUSTERS_DIR)],
            "pypi caches": [str(pid) for pid in processes_with_prefix(f"--cluster-dir={CLUSTERS_DIR}/")],
            "bridges": network.testbed_bridges(),
            "nat rules": [f"{table}: {rule}" for table, rule in network.testbed_rules()],
            "inventories": sorted(str(p) for p in INVENTORY_DIR.glob("*.yml"))
            if INVENTORY_DIR.exists() else [],
        }
    result: dict[str, list[str]] = {
        "clusters": [], "nodes": [], "mounts": [], "pypi caches": [], "bridges": [], "nat rules": [],
        "inventories": [],
    }
    for name in names:
        cluster = Cluster(check_name("cluster", name))
        if cluster.directory.exists():
            result["clusters"].append(name)
        result["nodes"] += [
            f"pid {pid}: {d}" for pid, d in sorted(nspawn_processes(cluster.directory).items())
        ] + [f"pid {pid} (orphan): {d}" for pid, d in sorted(orphan_inits(cluster.directory).items())]
        result["mounts"] += [str(m) for m in mounts_under(cluster.directory)]
        result["pypi caches"] += [str(pid) for pid in processes_with(cluster._cache_marker)]
        result["bridges"] += bridges_of(name)
        result["nat rules"] += [f"{t}: {r}" for t, r in network.testbed_rules(name)]
        if cluster.inventory_path.exists():
            result["inventories"].append(str(cluster.inventory_path))
    return result


def prune_bases() -> list[Path]:
    """Remove base images no node uses and no current recipe names."""
    keep = {base_dir(r) for r in RELEASES}
    for cluster in all_clusters():
        keep |= {Path(str(rec["base"])) for rec in cluster.nodes.values()}
    removed = []
    for path in sorted((STATE_DIR / "base").glob("*")):
        if path.is_dir() and path not in keep:
            shutil.rmtree(path)
            removed.append(path)
    return removed
