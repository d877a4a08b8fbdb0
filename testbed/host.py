"""Host-side helpers: where state lives, running commands, locks, preconditions."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from testbed.errors import TestbedError

#: All state of the test bed (base images, clusters, SSH key, pip cache).
STATE_DIR = Path(os.environ.get("HPO_TESTBED_STATE", "/var/lib/hpo-testbed"))
#: The repository this package lives in; generated inventories go below it.
REPO_DIR = Path(__file__).resolve().parent.parent

#: Host commands the test bed needs, and the Debian package providing each.
REQUIRED_COMMANDS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "iptables": "iptables",
    "ip": "iproute2",
    "bridge": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "nsenter": "util-linux",
    "mount": "mount",
}


def log(message: str) -> None:
    """Progress output, with a UTC timestamp, on stderr."""
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    print(f"[testbed {stamp}] {message}", file=sys.stderr, flush=True)


def run(
    args: list[str],
    *,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise TestbedError with its output."""
    try:
        proc = subprocess.run(
            args,
            check=False,
            text=True,
            capture_output=capture,
            timeout=timeout,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise TestbedError(f"command not found: {args[0]}; run bin/setup") from exc
    if check and proc.returncode != 0:
        output = ((proc.stdout or "") + (proc.stderr or "")).strip()
        raise TestbedError(
            f"command failed ({proc.returncode}): {' '.join(args)}\n{output}"
        )
    return proc


def require_root() -> None:
    if os.geteuid() != 0:
        raise TestbedError(
            "the test bed needs root (it creates bridges, NAT rules, mounts "
            "and containers); run it with sudo"
        )


def require_commands() -> None:
    missing = {
        cmd: pkg for cmd, pkg in REQUIRED_COMMANDS.items() if shutil.which(cmd) is None
    }
    if missing:
        packages = " ".join(sorted(set(missing.values())))
        raise TestbedError(
            f"missing host commands: {', '.join(sorted(missing))}. "
            f"Run bin/setup, or: apt-get install -y {packages}"
        )


def require_free_space(path: Path, needed_mib: int, purpose: str) -> None:
    """Fail early, with numbers, when the disk holding `path` is too full."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    stat = os.statvfs(probe)
    free_mib = stat.f_bavail * stat.f_frsize // (1024 * 1024)
    if free_mib < needed_mib:
        raise TestbedError(
            f"disk full: {purpose} needs about {needed_mib} MiB free on the "
            f"filesystem of {probe}, only {free_mib} MiB left. Free space "
            f"(bin/testbed down, bin/testbed prune) and retry."
        )


@contextlib.contextmanager
def file_lock(path: Path, what: str) -> Iterator[None]:
    """Exclusive flock on `path`; tells the user when it has to wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for {what} (another testbed command holds {path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: Host kernel limits that many containers share: every node's systemd (and
#: each SSH login's user manager) takes inotify instances from root's budget,
#: and the default of 128 runs out at about a dozen nodes ("Too many open files",
#: user@0.service fails, the node turns "degraded").
KERNEL_MINIMUMS = {
    "fs/inotify/max_user_instances": 8192,
    "fs/inotify/max_user_watches": 524288,
}


def raise_kernel_limits() -> None:
    """Raise host limits the nodes share (only ever upwards)."""
    for key, minimum in KERNEL_MINIMUMS.items():
        path = Path("/proc/sys") / key
        current = int(path.read_text().split()[0])
        if current < minimum:
            path.write_text(f"{minimum}\n")
            log(f"raised {key.replace('/', '.')} from {current} to {minimum} for the nodes")


def ssh_key_path() -> Path:
    """The private key for root on every node; created on first use."""
    key = STATE_DIR / "ssh" / "id_ed25519"
    with file_lock(STATE_DIR / "ssh.lock", "the SSH key"):
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            run(
                [
                    "ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                    "-C", "hpo-testbed", "-f", str(key),
                ]
            )
    return key


SSH_OPTIONS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=5",
]


def ssh_command(address: str, command: list[str] | None = None) -> list[str]:
    """The ssh argv to reach root@address with the test bed key."""
    argv = ["ssh", "-i", str(ssh_key_path()), *SSH_OPTIONS, f"root@{address}"]
    return argv + (command or [])


def mounts_under(prefix: Path) -> list[Path]:
    """Mount points at or below `prefix`, deepest first (unmount order)."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            mount_point = line.split()[4].encode().decode("unicode_escape")
            path = Path(mount_point)
            if path == prefix or prefix in path.parents:
                found.append(path)
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


#: Environment variable set in every node's PID 1 (its value: the node's rootfs).
#: It finds a node's systemd even when its systemd-nspawn parent is gone.
NODE_MARKER = "HPO_TESTBED_ROOTFS"


def orphan_inits(prefix: Path) -> dict[int, str]:
    """Nodes' PID 1 processes below `prefix` whose systemd-nspawn has died.

    A SIGKILLed systemd-nspawn leaves its container running (re-parented to
    the host's init); such a node must be killed before its disk goes away.
    """
    found: dict[int, str] = {}
    marker = f"{NODE_MARKER}=".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        for item in environ:
            if item.startswith(marker):
                rootfs = Path(item[len(marker):].decode(errors="replace"))
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                parent = Path(f"/proc/{ppid}/cmdline")
                try:
                    parent_is_nspawn = b"systemd-nspawn" in parent.read_bytes()
                except OSError:
                    parent_is_nspawn = False
                if (rootfs == prefix or prefix in rootfs.parents) and not parent_is_nspawn:
                    found[int(entry.name)] = str(rootfs)
    return found


def send_signal(pid: int, sig: int) -> None:
    """Signal `pid`; a process that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def processes_where(match) -> list[int]:
    """PIDs of processes for which `match(argument)` holds for one of their arguments (bytes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(match(arg) for arg in argv):
                found.append(int(entry.name))
    return found


def processes_with(argument: str) -> list[int]:
    """PIDs of processes that have `argument` as one of their arguments."""
    wanted = argument.encode()
    return processes_where(lambda arg: arg == wanted)


def processes_with_prefix(prefix: str) -> list[int]:
    """PIDs of processes with an argument starting with `prefix`."""
    wanted = prefix.encode()
    return processes_where(lambda arg: arg.startswith(wanted))


def nspawn_processes(prefix: Path) -> dict[int, str]:
    """systemd-nspawn processes whose -D directory lies below `prefix`."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"systemd-nspawn"):
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        for index, arg in enumerate(args):
            directory = None
            if arg == "-D" and index + 1 < len(args):
                directory = args[index + 1]
            elif arg.startswith("--directory="):
                directory = arg.split("=", 1)[1]
            if directory and (
                Path(directory) == prefix or prefix in Path(directory).parents
            ):
                found[int(entry.name)] = directory
    return found
