#!/usr/bin/env python3
"""Is this node's Ray alive in its cluster? Restart it when it is not.

Usage: ray_health.py [--heal] UNIT KIND GCS_ADDRESS NODE_IP

KIND is head or worker. Run as root with the Ray virtualenv's Python, by the
UNIT-health.timer every few seconds and by the Ray role on every run. Prints
one JSON line: {"state": ..., "reason": ...}. Exit status:

  0  nothing to do: Ray is alive, stopped on purpose, or systemd is already
     (re)starting it;
  3  running but not alive (the reason says why); with --heal, Ray was killed
     and systemd starts it again (the unit's Restart=);
  4  the GCS refused this check's credentials (token authentication): the
     check could not tell, so it leaves Ray alone (killing Ray would not
     give the check a token; see RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH);
  2  usage or an error of this script.

`ray start --block` exits (and systemd restarts it) when one of its Ray
processes crashes, but not when one ends on SIGTERM, and a worker whose head
restarted keeps a raylet that the new head does not know. The checks, cheap
first:

  1. the unit is active (not starting, stopping or stopped) or failed
     (a failed unit is restarted);
  2. `ray start` (the unit's main process) has a raylet child, and on the
     head a gcs_server (ended ones that `ray start` has not reaped yet do
     not count);
  3. the GCS port at GCS_ADDRESS accepts connections, and the GCS lists an
     alive node with NODE_IP. A worker that
     cannot reach its head's GCS is left alone: its own raylet exits after
     Ray's reconnect timeout, and restarting it would not help.

Check 3 reads the GCS through ray._raylet.GcsClient (not a public API, the
role pins Ray); the same call as ray_node_alive.py, which the unit's
ExecStartPost runs, so an active unit has joined at least once.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

HEALED = 3
REFUSED = 4
# How Ray reports a missing or wrong token: gRPC status UNAUTHENTICATED
# (or PERMISSION_DENIED), or its own "no authentication token was found".
AUTH_ERROR = re.compile(r"unauthenticated|permission.denied|authentication token", re.I)


def unit_state(unit: str) -> dict[str, str]:
    done = subprocess.run(
        ["systemctl", "show", unit, "-p", "ActiveState", "-p", "SubState", "-p", "MainPID",
         "-p", "LoadState"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def process_names(main_pid: int) -> set[str]:
    """Names of MAIN_PID and its descendants, from /proc.

    Not the unit's control group: some containers (and the nspawn test bed)
    cannot read it, and `ray start` starts every Ray process as its child.
    """
    parent: dict[int, int] = {}
    name: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses.
        pid = int(text[: text.index(" ")])
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        if state in ("Z", "X"):  # ended, not yet reaped by `ray start`
            continue
        name[pid] = text[text.index("(") + 1 : text.rindex(")")]
        parent[pid] = int(ppid)
    found: set[str] = set()
    todo = [main_pid] if main_pid in name else []
    while todo:
        pid = todo.pop()
        found.add(name[pid])
        todo.extend(child for child, ppid in parent.items() if ppid == pid)
    return found


def gcs_port_open(gcs_address: str) -> bool:
    """Does anything accept connections on the GCS port? (Ray's client waits
    about 35 s for a GCS that is gone; the kernel answers at once.)"""
    host, _, port = gcs_address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            return True
    except OSError:
        return False


def alive_node_ips(gcs_address: str) -> list[str]:
    from ray._raylet import GcsClient

    nodes = GcsClient(address=gcs_address).get_all_node_info(timeout=10)
    return sorted(info.node_manager_address for info in nodes.values() if info.state == 0)


def diagnose(unit: str, kind: str, gcs_address: str, node_ip: str) -> tuple[str, str]:
    """(state, reason); state is alive, idle, broken, or refused.

    A unit found active, then broken by the checks after it, is read again:
    if systemd began to stop or restart it meanwhile (a playbook's restart),
    the node left the GCS because of that, and it is not broken."""
    state = unit_state(unit)
    verdict = _verdict(unit, state, kind, gcs_address, node_ip)
    if verdict[0] == "broken" and state.get("ActiveState") == "active":
        now = unit_state(unit)
        if (now.get("ActiveState"), now.get("MainPID")) != ("active", state.get("MainPID")):
            return "idle", (f"{unit} went {now.get('ActiveState')} ({now.get('SubState')}) while this check "
                            f"ran: systemd is on it")
    return verdict


def _verdict(unit: str, state: dict[str, str], kind: str, gcs_address: str, node_ip: str) -> tuple[str, str]:
    active = state.get("ActiveState", "")
    if state.get("LoadState") != "loaded":
        return "idle", f"{unit} is not installed"
    if active == "failed":
        return "broken", f"{unit} is failed ({state.get('SubState')})"
    if active != "active":
        return "idle", f"{unit} is {active} ({state.get('SubState')}): systemd is on it"
    names = process_names(int(state.get("MainPID") or 0))
    needed = ["raylet"] + (["gcs_server"] if kind == "head" else [])
    missing = [name for name in needed if name not in names]
    if missing:
        return "broken", f"{unit} is active but runs no {' and no '.join(missing)}"
    try:
        if not gcs_port_open(gcs_address):
            raise ConnectionError("nothing listens on its port")
        alive = alive_node_ips(gcs_address)
    except Exception as exc:  # noqa: BLE001 - any GCS error means "not reachable"
        if AUTH_ERROR.search(str(exc)):
            return "refused", (f"the GCS at {gcs_address} refused this check's credentials "
                               f"(RAY_AUTH_MODE={os.environ.get('RAY_AUTH_MODE', 'unset')}, "
                               f"RAY_AUTH_TOKEN_PATH={os.environ.get('RAY_AUTH_TOKEN_PATH', 'unset')}): "
                               f"{str(exc).strip()[:300]}; left alone")
        if kind == "head":
            return "broken", f"the head's own GCS at {gcs_address} does not answer: {exc}"
        return "idle", f"the head's GCS at {gcs_address} does not answer ({exc}); waiting for it"
    if node_ip not in alive:
        return "broken", (f"the GCS at {gcs_address} does not list {node_ip} as alive "
                          f"(alive: {', '.join(alive) or 'none'})")
    return "alive", f"{node_ip} is alive in the cluster at {gcs_address}"


def heal(unit: str) -> None:
    """Kill every process of the unit; its Restart= starts it again (a failed one: start it)."""
    if unit_state(unit).get("ActiveState") == "failed":
        subprocess.run(["systemctl", "reset-failed", unit], check=False, timeout=30)
        subprocess.run(["systemctl", "start", "--no-block", unit], check=True, timeout=30)
        return
    # SIGKILL, not a stop: a broken node has nothing to drain, and a drain
    # asks a GCS that may be the broken part (it waits up to its timeout).
    # Where systemd cannot signal the whole control group (some containers)
    # it still kills the main process and says "Input/output error"; the
    # unit's ExecStopPost (pkill of the ray user) removes the rest.
    subprocess.run(["systemctl", "kill", "--kill-whom=all", "--signal=SIGKILL", unit],
                   check=False, timeout=30)


def main(argv: list[str]) -> int:
    do_heal = argv[:1] == ["--heal"]
    args = argv[1:] if do_heal else argv
    if len(args) != 4 or args[1] not in ("head", "worker"):
        print(__doc__, file=sys.stderr)
        return 2
    unit, kind, gcs_address, node_ip = args
    state, reason = diagnose(unit, kind, gcs_address, node_ip)
    healed = state == "broken" and do_heal
    if healed:
        heal(unit)
    print(json.dumps({"state": state, "reason": reason, "healed": healed}))
    if state == "broken":
        print(f"{unit}: {reason}" + ("; killed it, systemd starts it again" if healed else ""),
              file=sys.stderr)
        return HEALED
    if state == "refused":
        print(f"{unit}: {reason}", file=sys.stderr)
        return REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
