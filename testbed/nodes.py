"""One node: an overlayfs copy of a base image, booted by systemd-nspawn.

Layout of a node directory::

    nodes/<name>/upper   overlay upper layer (everything the node writes)
    nodes/<name>/work    overlay work dir
    nodes/<name>/rootfs  the mounted overlay, booted with systemd-nspawn -D
    nodes/<name>/console.log  what the node printed while booting
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import TestbedError
from testbed.host import (
    NODE_MARKER,
    STATE_DIR,
    mounts_under,
    nspawn_processes,
    orphan_inits,
    run,
    send_signal,
    ssh_command,
)
from testbed.pypi_cache import PORT as PYPI_CACHE_PORT

#: Host directory shared by all nodes as pip's cache (see /etc/pip.conf).
PIP_CACHE = STATE_DIR / "pip-cache"
PIP_CACHE_IN_NODE = "/var/cache/hpo-testbed/pip"
#: One host directory per cluster, bound into each of its nodes at this path: the test
#: bed's stand-in for an NFS share (Ray Tune's storage_path on several nodes, docs/tune.md).
SHARED_IN_NODE = "/srv/testbed-shared"


@dataclass
class Node:
    name: str
    directory: Path
    address: str
    gateway: str
    bridge: str
    release: str
    base: Path

    #: the systemd-nspawn started by this command, if it started one
    process: subprocess.Popen[bytes] | None = None

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs"

    # ---- filesystem ---------------------------------------------------

    def mount(self) -> None:
        """Mount the overlay (idempotent)."""
        if self.rootfs in mounts_under(self.rootfs):
            return
        for sub in ("upper", "work", "rootfs"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        options = (
            f"lowerdir={self.base},upperdir={self.directory / 'upper'},"
            f"workdir={self.directory / 'work'}"
        )
        run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.rootfs)])

    def personalize(self, public_key: str, hosts: dict[str, str]) -> None:
        """Give the node its identity (once) and current settings (every up)."""
        root = self.rootfs
        etc = root / "etc"
        machine_id = etc / "machine-id"
        if not machine_id.read_text().strip():
            machine_id.write_text(uuid.uuid4().hex + "\n")
        (etc / "hostname").write_text(self.name + "\n")
        if not list((etc / "ssh").glob("ssh_host_*_key")):
            # -A with -f PREFIX writes PREFIX/etc/ssh/ssh_host_*: keys unique to this node
            run(["ssh-keygen", "-A", "-f", str(root)])
        ssh_dir = root / "root" / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text(public_key.strip() + "\n")
        authorized.chmod(0o600)
        (etc / "systemd" / "network" / "10-hpo-testbed.network").write_text(
            "# written by hpo-testbed\n"
            "[Match]\nName=host0\n\n"
            f"[Network]\nAddress={self.address}/24\nGateway={self.gateway}\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
        write_hosts_block(etc / "hosts", hosts)
        locale = etc / "default" / "locale"
        if not locale.exists():  # pam_env warns at every login without it
            locale.write_text("LANG=C.UTF-8\n")
        # Root lingers (what `loginctl enable-linger root` writes): its user
        # manager (user@0.service) starts at boot and stays. Without it, logind
        # stops the manager 10 s after the last SSH session ends; in these
        # containers that stop now and then hangs until its 2-min timeout
        # ("Processes still around after final SIGKILL"), and every login in
        # the meantime waits for it: Ansible stalled 115 s on a bookworm node,
        # 52 and 97 s on trixie ones.
        linger = root / "var" / "lib" / "systemd" / "linger"
        linger.mkdir(parents=True, exist_ok=True)
        (linger / "root").touch()
        (etc / "pip.conf").write_text(
            "# written by hpo-testbed: PyPI through the host's caching proxy (testbed/pypi_cache.py),\n"
            "# so a wheel is downloaded once for all nodes; wheels built here are cached too\n"
            "[global]\n"
            f"index-url = http://{self.gateway}:{PYPI_CACHE_PORT}/simple/\n"
            f"trusted-host = {self.gateway}\n"
            f"cache-dir = {PIP_CACHE_IN_NODE}\n"
            "cert = /etc/ssl/certs/ca-certificates.crt\n"
        )

    # ---- processes ----------------------------------------------------

    def exit_reason(self) -> str:
        """How the systemd-nspawn this command started ended ('' if unknown)."""
        if self.process is None or self.process.poll() is None:
            return ""
        code = self.process.returncode
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    def nspawn_pid(self) -> int | None:
        pids = nspawn_processes(self.directory)
        return min(pids) if pids else None

    def is_running(self) -> bool:
        # The systemd-nspawn this command started counts as running until it
        # exits: right after Popen returns, the kernel may not yet show its
        # argv in /proc (exec is past the point where the parent is released
        # but the new argv is not mapped yet), and the /proc scan misses it.
        if self.process is not None and self.process.poll() is None:
            return True
        return self.nspawn_pid() is not None

    def boot(self) -> None:
        """Start systemd-nspawn in the background (returns at once)."""
        kill_orphans(self.directory)
        stale_link = self.directory / STALE_LINK
        if stale_link.exists():  # left by crash()
            name = stale_link.read_text().strip()
            if name and Path(f"/sys/class/net/{name}").exists():
                run(["ip", "link", "delete", name], check=False)
            stale_link.unlink()
        PIP_CACHE.mkdir(parents=True, exist_ok=True)
        PIP_CACHE.chmod(0o1777)
        shared = self.directory.parent.parent / "shared"  # <cluster>/nodes/<node> -> <cluster>/shared
        shared.mkdir(parents=True, exist_ok=True)
        shared.chmod(0o1777)
        argv = [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--boot",
            f"--directory={self.rootfs}",
            f"--machine={self.name}",
            f"--network-bridge={self.bridge}",
            "--resolv-conf=replace-host",
            "--timezone=off",
            "--console=read-only",
            f"--bind={PIP_CACHE}:{PIP_CACHE_IN_NODE}",
            f"--bind={shared}:{SHARED_IN_NODE}",
            f"--setenv={NODE_MARKER}={self.rootfs}",
        ]
        console = open(self.directory / "console.log", "ab")  # noqa: SIM115  handed to the child
        with console:
            self.process = subprocess.Popen(  # noqa: S603  fixed argv, no shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def init_pid(self) -> int | None:
        """PID (on the host) of the node's systemd, found below systemd-nspawn."""
        top = self.nspawn_pid()
        if top is None:
            return None
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
        queue = list(children.get(top, []))
        while queue:
            pid = queue.pop(0)
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:") and line.split()[-1] == "1" and len(
                    line.split()
                ) > 2:
                    return pid
            queue.extend(children.get(pid, []))
        return None

    def exec(self, command: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command inside the node without SSH (nsenter into its namespaces)."""
        pid = self.init_pid()
        if pid is None:
            raise TestbedError(f"node {self.name} is not running")
        return run(
            ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", *command],
            check=False,
            timeout=timeout,
        )

    def system_state(self) -> str:
        try:
            proc = self.exec(["systemctl", "is-system-running"], timeout=10)
        except (TestbedError, subprocess.TimeoutExpired):
            return "unreachable"
        return proc.stdout.strip() or "unknown"

    def ssh_ok(self) -> bool:
        proc = run(ssh_command(self.address, ["true"]), check=False, timeout=20)
        return proc.returncode == 0

    def failed_units(self) -> str:
        proc = self.exec(["systemctl", "--failed", "--no-legend", "--plain"])
        return proc.stdout.strip()

    def journal_tail(self, lines: int = 60) -> str:
        text = ""
        if self.init_pid() is not None:
            proc = self.exec(["journalctl", "-b", "--no-pager", "-n", str(lines)])
            text += proc.stdout
        console = self.directory / "console.log"
        if console.exists():
            tail = console.read_text(errors="replace").splitlines()[-lines:]
            text += "\n--- console.log (tail) ---\n" + "\n".join(tail)
        return text

    def stop(self, grace: float = 10.0) -> None:
        """Power the node off (SIGTERM to nspawn), kill it if it hangs."""
        pids = list(nspawn_processes(self.directory))
        stop_nspawn(pids, grace)

    def crash(self) -> None:
        """Cut the node's power as its peers see it: its network link goes down first (so
        nothing it holds open is closed politely: no FIN, no RST, no orderly shutdown),
        then every process of the node is SIGKILLed. ``up`` boots it again."""
        init = self.init_pid()
        host_side = ""
        if init is not None:
            inside = ["nsenter", "-t", str(init), "-n"]
            # "2: host0@if57: <...": 57 is the host end's index (/sys here shows the host's links)
            shown = run([*inside, "ip", "-o", "link", "show", "host0"], check=False).stdout
            peer = re.search(r"host0@if(\d+)", shown)
            host_side = _link_with_index(peer.group(1)) if peer else ""
            run([*inside, "ip", "link", "set", "host0", "down"], check=False)
        kill_nspawn(list(nspawn_processes(self.directory)))
        if host_side:
            # The veth pair lives on while the dead node's TCP connections retransmit into
            # the downed link; the next boot removes it (it would fail with "File exists").
            (self.directory / STALE_LINK).write_text(host_side + "\n")

    def unmount(self) -> None:
        for mount_point in mounts_under(self.directory):
            if run(["umount", str(mount_point)], check=False).returncode != 0:
                run(["umount", "--lazy", str(mount_point)])


HOSTS_BEGIN = "# BEGIN hpo-testbed cluster nodes"
HOSTS_END = "# END hpo-testbed cluster nodes"


def write_hosts_block(path: Path, hosts: dict[str, str]) -> None:
    """Keep the cluster's names in a marked block of /etc/hosts; lines that
    others (a role under test) added outside the block stay as they are."""
    old = path.read_text().splitlines() if path.exists() else []
    if HOSTS_BEGIN in old and HOSTS_END in old:
        start, end = old.index(HOSTS_BEGIN), old.index(HOSTS_END)
        before, after = old[:start], old[end + 1:]
    else:
        before = [line for line in old if line.strip()] or [
            "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"
        ]
        after = []
    block = [HOSTS_BEGIN] + [f"{addr}\t{name}" for name, addr in sorted(hosts.items())] + [HOSTS_END]
    text = "\n".join(before + block + after) + "\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


STALE_LINK = "crashed-link"  # file in a node's directory: the host end of its veth after a crash


def _link_with_index(index: str) -> str:
    """The name of the host's network link with this ifindex ('' if none)."""
    for link in Path("/sys/class/net").iterdir():
        try:
            if (link / "ifindex").read_text().strip() == index:
                return link.name
        except OSError:
            continue
    return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    # a zombie still answers kill(0); treat it as gone
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: list[int], timeout: float, step: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(step)


def stop_nspawn(pids: list[int], grace: float) -> None:
    """SIGTERM systemd-nspawn processes (orderly poweroff), then SIGKILL."""
    for pid in pids:
        send_signal(pid, signal.SIGTERM)
    _wait_gone(pids, grace, 0.2)
    kill_nspawn([pid for pid in pids if _alive(pid)])


def kill_nspawn(pids: list[int]) -> None:
    """SIGKILL systemd-nspawn processes and everything below them (no orderly poweroff)."""
    for pid in pids:
        # killing the container's PID 1 ends its whole PID namespace
        for child in _descendants(pid):
            send_signal(child, signal.SIGKILL)
        send_signal(pid, signal.SIGKILL)
    _wait_gone(pids, 10, 0.2)


def kill_orphans(prefix: Path) -> list[int]:
    """Kill nodes' systemd left running without their systemd-nspawn."""
    pids = list(orphan_inits(prefix))
    for pid in pids:
        send_signal(pid, signal.SIGKILL)  # PID 1 of a namespace: takes all of it along
    _wait_gone(pids, 10, 0.1)
    return pids


def _descendants(pid: int) -> list[int]:
    result = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            child = int(entry.name)
            result.append(child)
            result.extend(_descendants(child))
    return result
