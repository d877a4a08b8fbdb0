#!/usr/bin/env python3
"""Wait until the GCS lists an alive Ray node with this node IP.

Usage: ray_node_alive.py GCS_ADDRESS NODE_IP TIMEOUT_SECONDS

Run with the Ray virtualenv's Python. `ray start --block` keeps running even
while its raylet has not registered yet; this asks the head's GCS directly.
It uses ray._raylet.GcsClient, which is not a public API: the role pins the
Ray version, and when the class is missing the check reports that it could
not run (exit 0, "checked": false) instead of failing the node.
Exit 1 with the alive nodes it saw when the node is not there in time.

As the unit's ExecStartPost, systemd gives it $MAINPID (`ray start`): when
that process has ended (Ray failed to start), it exits 1 at once, so the
unit fails and Restart= tries again without waiting for the timeout; and
only a node that started after that process counts (not the record of the
node's previous run, which the GCS may still list as alive).
"""

import json
import os
import sys
import time


def main_process_gone() -> bool:
    """True when systemd named a main process ($MAINPID) and it has ended."""
    pid = os.environ.get("MAINPID", "")
    if not pid.isdigit() or pid == "0":
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def main_process_started_ms() -> float | None:
    """When $MAINPID (`ray start`) started, in ms since the epoch; None outside a unit."""
    pid = os.environ.get("MAINPID", "")
    if not pid.isdigit() or pid == "0":
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/stat") as stat:
            boot = next(int(line.split()[1]) for line in stat if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return (boot + start_ticks / os.sysconf("SC_CLK_TCK")) * 1000


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    gcs_address, node_ip, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    try:
        from ray._raylet import GcsClient
    except ImportError as exc:
        print(json.dumps({"checked": False, "reason": f"ray._raylet.GcsClient: {exc}"}))
        return 0
    deadline = time.monotonic() + timeout
    # As ExecStartPost: only a node this start made counts. The node of the
    # run before (same IP) can still be listed alive for seconds after its
    # raylet was killed, until the GCS's own health check marks it dead;
    # counting it would make the unit active before the new raylet joined.
    # btime has 1 s steps: 2 s of slack.
    since_ms = main_process_started_ms()
    alive: list[str] = []
    joined = False
    error = None
    while True:
        try:
            nodes = GcsClient(address=gcs_address).get_all_node_info(timeout=10)
            alive = sorted(info.node_manager_address for info in nodes.values() if info.state == 0)
            joined = any(info.state == 0 and info.node_manager_address == node_ip
                         and (since_ms is None or info.start_time_ms >= since_ms - 2000)
                         for info in nodes.values())
            error = None
        except Exception as exc:  # the GCS is restarting or unreachable: retry
            error = str(exc)
        if joined:
            print(json.dumps({"checked": True, "alive": alive}))
            return 0
        if main_process_gone():
            print(f"`ray start` (pid {os.environ['MAINPID']}) ended before node {node_ip} "
                  f"joined the cluster at {gcs_address}. See journalctl -u ray on this node.",
                  file=sys.stderr)
            return 1
        if time.monotonic() >= deadline:
            break
        time.sleep(2)
    print(json.dumps({"checked": True, "alive": alive, "error": error}))
    print(
        f"node {node_ip} is not an alive node of the Ray cluster at {gcs_address} "
        f"after {timeout:.0f} s; alive nodes: {', '.join(alive) or 'none'}"
        + (f"; last error: {error.rstrip('.')}" if error else "")
        + ". See journalctl -u ray on this node.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
