"""What the verifiers that read trials or the store share (molecule/cluster,
molecule/keydb with keydb-packages and keydb-valkey), and what they and
molecule/ray read from a playbook's output (recap, changed_tasks).

They act on the real nodes a scenario converged, over SSH (testinfra). The
study verifiers read the studies through the worker's public read-only
command, `hpo-worker trials --json` (worker/README.md), with the store
settings of the workers' root-only environment file. Import it with
`sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testinfra
from testinfra.utils.ansible_runner import AnsibleRunner

INVENTORY = str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)
RUNNER = AnsibleRunner(INVENTORY)
PROJECT = Path(__file__).resolve().parents[2]
VENV = "/opt/hpo-worker/venv"
ENV_FILE = "/etc/hpo-worker/keydb.env"


def node(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def with_store_env(command: str) -> str:
    """COMMAND (run as root) with the workers' store settings from their root-only file."""
    return f"bash -c {shlex.quote(f'set -a; . {ENV_FILE}; set +a; {command}')}"


def trials(host_name: str, study: str) -> list[dict]:
    """Every trial of STUDY, read on HOST_NAME with `hpo-worker trials --json` (read-only).

    Each trial: the command's fields, plus host and pid (from the `hpo` user attr)
    and value (the first objective value). No study yet: an empty list.
    """
    result = node(host_name).run(with_store_env(f"{VENV}/bin/hpo-worker trials --json --study {study}"))
    if result.rc == 2 and "no study named" in result.stderr:
        return []
    assert result.rc == 0, result.stderr[-3000:]
    out = []
    for line in result.stdout.splitlines():
        if line.strip():
            t = json.loads(line)
            hpo = t.get("hpo") if isinstance(t.get("hpo"), dict) else {}
            t.update(host=hpo.get("host"), pid=hpo.get("pid"), value=(t.get("values") or [None])[0])
            out.append(t)
    return out


def poll(probe, timeout: float, interval: float = 1.0):
    """Call PROBE until it returns something true or TIMEOUT s passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_for(what: str, probe, timeout: float, interval: float = 1.0):
    """Poll PROBE until it returns something true; fail the test naming WHAT after TIMEOUT s."""
    value = poll(probe, timeout, interval)
    if not value:
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
    return value


def ansible_playbook(playbook: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run playbooks/PLAYBOOK from the project directory on the scenario's inventory."""
    program = Path(sys.executable).with_name("ansible-playbook")
    return subprocess.run(
        [str(program), "-i", INVENTORY, *args, str(PROJECT / "playbooks" / playbook)],
        cwd=PROJECT, capture_output=True, text=True, timeout=timeout, check=False,
    )


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of an ansible-playbook run: host -> ok, changed, unreachable, failed."""
    rows = re.findall(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                      ANSI.sub("", output), re.M)
    return {h: {"ok": int(o), "changed": int(c), "unreachable": int(u), "failed": int(f)}
            for h, o, c, u, f in rows}


def changed_tasks(output: str) -> list[str]:
    """The task headers followed by a "changed:" line in an ansible-playbook output."""
    found, task = [], ""
    for line in ANSI.sub("", output).splitlines():
        if line.startswith("TASK ["):
            task = line.rstrip(" *")
        elif line.startswith("changed:"):
            found.append(f"{task} {line}")
    return found


def recorder(name: str):
    """record(**figures): merge FIGURES into .cache/NAME in the project directory, and print them."""
    path = PROJECT / ".cache" / name

    def record(**figures) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(path.read_text()) if path.exists() else {}
        data.update(figures)
        path.write_text(json.dumps(data, indent=2) + "\n")
        print("figures:", figures)

    return record


def ray_alive_nodes() -> int | None:
    """Alive nodes in the Ray cluster as the head's GCS lists them (its node
    table, which the roles' join check reads too), asked on the head with that
    node's token settings (/etc/ray/auth.env); None while it does not answer.

    Not `ray status`: it prints the autoscaler's summary, which the head's
    monitor refreshes every few seconds, so right after a node joined (the
    last task of a playbook run) it can still show the cluster without it."""
    head = RUNNER.get_hosts("ray_head")[0]
    address = RUNNER.get_variables(head)["cluster_address"]
    query = (
        "from ray._raylet import GcsClient; "
        f"nodes = GcsClient(address='{address}:6333').get_all_node_info(timeout=10); "
        "print(sum(info.state == 0 for info in nodes.values()))"
    )
    command = f"set -a; . /etc/ray/auth.env; set +a; /opt/ray/venv/bin/python -c {shlex.quote(query)}"
    out = node(head).run(f"bash -c {shlex.quote(command)}")
    if out.rc != 0 or not out.stdout.strip().isdigit():
        return None
    return int(out.stdout.strip())
