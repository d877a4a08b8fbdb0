"""Verifier of the ray scenario: the cluster formed, tasks run on every node,
a machine joins with --limit without touching the others, a settings change
restarts only its node, and systemd supervises Ray (restart on a crash, stop
leaves nothing behind).

Tests run in file order and build on each other (ray-4 joins, then is used
for the crash and stop checks).
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

SCENARIO = Path(__file__).resolve().parent.parent
# Molecule asks for coloured output; the recap is parsed, so turn it off.
PLAIN_OUTPUT = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
PROJECT = SCENARIO.parent.parent
INVENTORY = str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)
RUNNER = AnsibleRunner(INVENTORY)
HEAD = RUNNER.get_hosts("ray_head")[0]
WORKERS = sorted(RUNNER.get_hosts("ray_workers"))
NEW = "ray-4"
VENV = "/opt/ray/venv"
# Ray runs with token authentication: every Ray command here first reads the
# node's RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH (the token stays in its file).
RAY_AUTH_ENV = "/etc/ray/auth.env"

# Runs as the ray user on the head: one task pinned to each alive node by its
# node:<ip> resource, and one task per custom resource named on the command
# line; prints where each ran.
WHERE_JOB = r"""
import json, socket, sys
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)

@ray.remote(num_cpus=0)
def where():
    return {"hostname": socket.gethostname(), "ip": ray.util.get_node_ip_address()}

alive = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
by_ip = {ip: where.options(resources={"node:" + ip: 0.01}).remote() for ip in alive}
by_res = {name: where.options(resources={name: 1}).remote() for name in sys.argv[2:]}
print(json.dumps({
    "by_node_ip": {ip: ray.get(ref, timeout=240) for ip, ref in by_ip.items()},
    "by_resource": {name: ray.get(ref, timeout=240) for name, ref in by_res.items()},
}))
"""


def node(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def with_ray_auth(command: str) -> str:
    """COMMAND (run as root) with the node's Ray authentication settings."""
    return f"bash -c {shlex.quote(f'set -a; . {RAY_AUTH_ENV}; set +a; {command}')}"


def hostvars(name: str) -> dict:
    return RUNNER.get_variables(name)


def head_address() -> str:
    return f"{hostvars(HEAD)['cluster_address']}:6333"


def expected_totals(hosts: list[str], overrides: dict[str, dict] | None = None) -> dict:
    totals: dict[str, float] = {"CPU": 0.0, "GPU": 0.0}
    for name in hosts:
        hv = {**hostvars(name), **((overrides or {}).get(name, {}))}
        totals["CPU"] += hv["ray_num_cpus"]
        totals["GPU"] += hv.get("ray_num_gpus", 0)
        for res, amount in (hv.get("ray_resources") or {}).items():
            totals[res] = totals.get(res, 0.0) + amount
    return totals


def parse_status(text: str) -> tuple[int, dict[str, float]]:
    """Number of active nodes and the resource totals of `ray status`."""
    active = text.split("Active:", 1)[1].split("Pending:", 1)[0]
    nodes = len(re.findall(r"^\s*1 node_[0-9a-f]+\s*$", active, re.M))
    totals = {
        name: float(total)
        for total, name in re.findall(r"^\s*[\d.]+/([\d.]+) (\w+)\s*$", text, re.M)
    }
    return nodes, totals


def wait_for_status(nodes: int, totals: dict, timeout: float = 150) -> tuple[int, dict]:
    """Poll `ray status` on the head until it shows what is expected."""
    head = node(HEAD)
    deadline = time.monotonic() + timeout
    seen: tuple[int, dict] = (0, {})
    while time.monotonic() < deadline:
        out = head.run(with_ray_auth(f"{VENV}/bin/ray status --address {head_address()}"))
        if out.rc == 0 and "Active:" in out.stdout:
            seen = parse_status(out.stdout)
            got = {k: v for k, v in seen[1].items() if k in totals}
            if seen[0] == nodes and got == totals:
                return seen
        time.sleep(5)
    pytest.fail(f"ray status never showed {nodes} nodes and {totals}; last seen {seen}")


def run_job(*resources: str) -> dict:
    script = shlex.quote(WHERE_JOB)
    cmd = (
        f"cd /var/lib/ray && runuser -u ray -- env HOME=/var/lib/ray "
        f"{VENV}/bin/python -c {script} {head_address()} {' '.join(resources)}"
    )
    out = node(HEAD).run(with_ray_auth(cmd))
    assert out.rc == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def unit_identity(name: str) -> tuple[str, str]:
    out = node(name).check_output(
        "systemctl show ray -p MainPID -p ExecMainStartTimestampMonotonic --value"
    )
    pid, started = out.split()
    return pid, started


def ansible_playbook(*args: str) -> subprocess.CompletedProcess:
    playbook = Path(sys.executable).with_name("ansible-playbook")
    return subprocess.run(
        [str(playbook), "-i", INVENTORY, *args, str(PROJECT / "playbooks" / "ray.yml")],
        cwd=PROJECT, env=PLAIN_OUTPUT, capture_output=True, text=True, timeout=900, check=False,
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    output = ANSI.sub("", output)
    rows = re.findall(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                      output, re.M)
    return {h: {"ok": int(o), "changed": int(c), "unreachable": int(u), "failed": int(f)}
            for h, o, c, u, f in rows}


def test_inventory_is_a_head_and_two_different_workers():
    assert HEAD == "ray-1" and WORKERS == ["ray-2", "ray-3"]
    declared = {(hostvars(h)["ray_num_cpus"], hostvars(h).get("ray_num_gpus", 0))
                for h in [HEAD, *WORKERS]}
    assert len(declared) == 3, "each node should declare its own CPUs/GPUs"


@pytest.mark.parametrize("name", ["ray-1", "ray-2", "ray-3"])
def test_ray_runs_under_systemd_as_the_ray_user(name):
    host = node(name)
    svc = host.service("ray")
    assert svc.is_running and svc.is_enabled
    props = host.check_output(
        "systemctl show ray -p User -p Restart -p KillMode -p ExecStart")
    assert "User=ray" in props and "Restart=on-failure" in props
    assert "--block" in props and f"--node-ip-address={hostvars(name)['cluster_address']}" in props
    raylet = host.run("pgrep -u ray -f raylet/raylet")
    assert raylet.rc == 0, f"no raylet running as ray on {name}"


def test_ray_status_lists_every_node_with_the_inventory_totals():
    members = [HEAD, *WORKERS]
    nodes, totals = wait_for_status(len(members), expected_totals(members))
    assert nodes == 3
    assert totals["CPU"] == 6 and totals["GPU"] == 3 and totals["fast_disk"] == 2


def test_a_job_runs_a_task_on_each_node_placed_by_resources():
    result = run_job("fast_disk")
    ran_on = {ip: r["hostname"] for ip, r in result["by_node_ip"].items()}
    expected = {hostvars(h)["cluster_address"]: h for h in [HEAD, *WORKERS]}
    assert ran_on == expected
    # The custom resource exists only on ray-2, so that task must land there.
    assert result["by_resource"]["fast_disk"]["hostname"] == "ray-2"


def test_add_a_machine_with_limit_leaves_the_others_running():
    others = [HEAD, *WORKERS]
    before = {h: unit_identity(h) for h in others}
    assert node(NEW).run("systemctl cat ray").rc != 0, "ray-4 must start without Ray"

    done = ansible_playbook("-i", str(SCENARIO / "inventory" / "add-ray-4.yml"), "--limit", NEW)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert set(recap(done.stdout)) == {NEW}

    assert {h: unit_identity(h) for h in others} == before
    members = [*others, NEW]
    nodes, totals = wait_for_status(4, expected_totals(members))
    assert totals["late_joiner"] == 1
    result = run_job("late_joiner")
    assert sorted(r["hostname"] for r in result["by_node_ip"].values()) == sorted(members)
    assert result["by_resource"]["late_joiner"]["hostname"] == NEW


def test_a_settings_change_restarts_only_that_node():
    members = [HEAD, *WORKERS, NEW]
    before = {h: unit_identity(h) for h in members}
    done = ansible_playbook(
        "-i", str(SCENARIO / "inventory" / "add-ray-4.yml"), "-i", str(SCENARIO / "inventory" / "change-ray-3.yml"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    changed = {h: r["changed"] for h, r in recap(done.stdout).items()}
    assert changed["ray-3"] > 0
    assert [h for h, c in changed.items() if c] == ["ray-3"], changed

    after = {h: unit_identity(h) for h in members}
    assert after["ray-3"] != before["ray-3"]
    assert {h: after[h] for h in members if h != "ray-3"} == {
        h: before[h] for h in members if h != "ray-3"}
    totals = expected_totals(members, {"ray-3": {"ray_resources": {"spare_slot": 1}}})
    wait_for_status(4, totals)


def test_a_crashed_raylet_is_restarted_by_systemd():
    host = node(NEW)
    restarts = int(host.check_output("systemctl show ray -p NRestarts --value"))
    host.run("pkill -KILL -u ray -f raylet/raylet")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = int(host.check_output("systemctl show ray -p NRestarts --value"))
        if now > restarts and host.run("pgrep -u ray -f raylet/raylet").rc == 0:
            break
        time.sleep(3)
    else:
        pytest.fail("ray.service on ray-4 was not restarted after its raylet was killed")
    assert host.service("ray").is_running


def test_systemctl_stop_stops_ray_on_that_node_only():
    host = node(NEW)
    head_before = unit_identity(HEAD)
    host.run("systemctl stop ray")
    assert host.check_output("systemctl is-active ray || true") == "inactive"
    assert host.check_output("systemctl show ray -p Result --value") == "success"
    left = host.run("pgrep -u ray -a")
    assert left.rc == 1, f"Ray processes survived systemctl stop:\n{left.stdout}"
    assert unit_identity(HEAD) == head_before
