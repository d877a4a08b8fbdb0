"""Secure by default, on the real nodes of the cluster scenario that site.yml
converged (cluster-1 head + store primary, cluster-2 worker + replica,
cluster-3 worker): Ray's token (job API refused without it, accepted with it,
every node joined with it), every listening socket against docs/security.md,
the host firewall, and the workers' store credential (no CONFIG, FLUSHALL, ...).

The outsider is this machine: its address on the scenario's bridge is no
inventory member, and the test bed lists it in firewall_workstations (it may
reach the dashboard and Ray Client ports, and no other Ray or store port).
Every figure (listening sockets per node, what an unauthenticated client gets
from each port) is printed and written to .cache/security-figures.json in the
project directory. Nothing here changes the cluster for good: it runs before
test_lifecycle.py (conftest.py), whose token rotation also checks the
rotation's security side (head first, the old token refused after).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))
from verify_helpers import INVENTORY, PROJECT, RUNNER, VENV, node, ray_alive_nodes, recorder, wait_for, with_store_env  # noqa: E402
from verify_helpers import trials as study_trials  # noqa: E402

record = recorder("security-figures.json")
HEAD = RUNNER.get_hosts("ray_head")[0]
NODES = sorted(RUNNER.get_hosts("ray_head") + RUNNER.get_hosts("ray_workers"))
RAY = "/opt/ray/venv"
AUTH_ENV = "/etc/ray/auth.env"
TOKEN_FILE = "/etc/ray/auth_token"
PROBE = Path(__file__).resolve().parents[1] / "files" / "probe_grpc.py"
PLAIN_OUTPUT = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# docs/security.md, "Listening sockets": the ports of the roles' defaults, on
# the node's cluster address (and maybe loopback too).
HEAD_ONLY = {8265: "dashboard + job API", 8266: "optuna-dashboard", 10001: "Ray Client server"}
EVERY_RAY_NODE = {6342: "runtime env agent", 6344: "dashboard agent HTTP"}
STORE = {6379: "store (keydb-server)"}
# Ray 2.60 has no bind-address option for these: they listen on every
# interface (documented there, with what a client without the token gets).
ALL_INTERFACES_HEAD = {6333: "GCS", 44217: "autoscaler metrics", 44227: "dashboard metrics"}
ALL_INTERFACES = {6340: "raylet", 6341: "object manager", 6343: "dashboard agent gRPC",
                  6345: "metrics export"}
WORKER_RANGE = range(20000, 21000)  # core workers: every interface too
# The documented exception outside Ray: SSH on every address (Ansible needs it).
SSH = 22
LOOPBACK = {"127.0.0.1", "::1"}
EVERYWHERE = {"0.0.0.0", "::", "*"}


def hostvars(name: str) -> dict:
    return RUNNER.get_variables(name)


def address(name: str) -> str:
    return hostvars(name)["cluster_address"]


def token() -> str:
    return hostvars(HEAD)["ray_auth_token"]


def with_ray_auth(command: str) -> str:
    return f"bash -c {shlex.quote(f'set -a; . {AUTH_ENV}; set +a; {command}')}"


def dashboard(path: str, body: dict | None = None, bearer: str | None = None) -> tuple[int, str]:
    """HTTP request to the head's dashboard from this machine (the outsider)."""
    url = f"http://{address(HEAD)}:8265{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if bearer is not None:
        req.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def listening(name: str) -> list[dict]:
    """Every listening TCP socket of NAME: address, port, process."""
    out = node(name).check_output("ss -ltnpH")
    sockets = []
    for line in out.splitlines():
        local = line.split()[3]
        addr, _, port = local.rpartition(":")
        addr = addr.strip("[]").split("%")[0].removeprefix("::ffff:")
        proc = re.search(r'users:\(\("([^"]+)"', line)
        sockets.append({"address": addr, "port": int(port), "process": proc.group(1) if proc else "?"})
    return sorted(sockets, key=lambda s: (s["port"], s["address"]))


def on_cluster_address(name: str) -> dict[int, str]:
    ports = dict(EVERY_RAY_NODE)
    if name == HEAD:
        ports.update(HEAD_ONLY)
    if name in RUNNER.get_hosts("keydb"):
        ports.update(STORE)
    return ports


def on_every_interface(name: str) -> dict[int, str]:
    return {**ALL_INTERFACES, **(ALL_INTERFACES_HEAD if name == HEAD else {})}


def expected_ports(name: str) -> dict[int, str]:
    return {**on_cluster_address(name), **on_every_interface(name)}


def ansible_playbook(playbook: str, *args: str) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).with_name("ansible-playbook")
    return subprocess.run([str(tool), "-i", INVENTORY, *args, str(PROJECT / playbook)], cwd=PROJECT,
                          env=PLAIN_OUTPUT, capture_output=True, text=True, timeout=1500, check=False)


def recap(output: str) -> dict[str, tuple[int, int]]:
    rows = re.findall(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                      ANSI.sub("", output), re.M)
    return {h: (int(c), int(u) + int(f)) for h, c, u, f in rows}


# ------------------------------------------------------------------ token
@pytest.mark.parametrize("name", NODES)
def test_the_token_file_is_for_root_and_ray_only_and_never_on_a_command_line(name):
    host = node(name)
    f = host.file(TOKEN_FILE)
    assert (f.user, f.group, f.mode) == ("root", "ray", 0o640)
    assert host.file("/etc/ray").mode == 0o750
    assert host.run(f"runuser -u nobody -- cat {TOKEN_FILE}").rc != 0, "another user read the token"
    assert host.check_output(f"cat {TOKEN_FILE}") == token()
    # not in the unit, not in any process's arguments or the unit's environment
    assert token() not in host.check_output("systemctl cat ray")
    assert token() not in host.check_output("ps -eo args")
    assert "RAY_AUTH_MODE=token" in host.check_output(f"cat {AUTH_ENV}")


def test_every_node_joined_with_the_token_and_a_client_without_it_is_refused():
    assert ray_alive_nodes() == len(NODES)
    # `ray status` with the node's token settings answers
    out = node(HEAD).run(with_ray_auth(f"{RAY}/bin/ray status --address {address(HEAD)}:6333"))
    assert out.rc == 0 and "Active:" in out.stdout, out.stdout + out.stderr
    # the same command without the token: the GCS refuses it
    out = node(HEAD).run(f"RAY_AUTH_MODE=token {RAY}/bin/ray status --address {address(HEAD)}:6333")
    assert out.rc != 0, out.stdout
    out = node(HEAD).run(f"{RAY}/bin/ray status --address {address(HEAD)}:6333")
    assert out.rc != 0, out.stdout
    record(ray_status_without_token=(out.stderr or out.stdout).strip().splitlines()[-1][:300])


def test_a_job_from_the_outsider_is_refused_without_the_token_and_runs_with_it():
    job = {"entrypoint": "id -un; hostname"}
    no_token = dashboard("/api/jobs/", job)
    wrong = dashboard("/api/jobs/", job, bearer="x" * 43)
    assert no_token[0] == 401, no_token
    assert wrong[0] == 403, wrong
    status, body = dashboard("/api/jobs/", job, bearer=token())
    assert status == 200, (status, body)
    job_id = json.loads(body)["submission_id"]

    def finished():
        s, b = dashboard(f"/api/jobs/{job_id}", bearer=token())
        return json.loads(b) if s == 200 and json.loads(b)["status"] in ("SUCCEEDED", "FAILED", "STOPPED") else None

    info = wait_for(f"job {job_id} to finish", finished, 180, 2)
    assert info["status"] == "SUCCEEDED", info
    logs = json.loads(dashboard(f"/api/jobs/{job_id}/logs", bearer=token())[1])["logs"]
    # the job's two output lines (Ray's own "Running entrypoint ..." line may
    # come before, between or after them: it is written by another process)
    assert [line.strip() for line in logs.splitlines() if line.strip() in ("ray", HEAD)] == ["ray", HEAD], logs
    record(job_api={"no token": no_token[0], "wrong token": wrong[0], "token": status})


# ------------------------------------------------------------------ sockets
@pytest.mark.parametrize("name", NODES)
def test_every_listening_socket_is_on_the_cluster_address_or_loopback_or_documented(name):
    sockets = listening(name)
    record(**{f"sockets {name}": [f"{s['address']}:{s['port']} {s['process']}" for s in sockets]})
    mine, bound, everywhere = address(name), on_cluster_address(name), on_every_interface(name)
    wrong = []
    for s in sockets:
        if s["address"] in LOOPBACK:
            continue
        if s["address"] == mine and s["port"] in bound:
            continue
        if s["address"] in EVERYWHERE and (s["port"] in everywhere or s["port"] in WORKER_RANGE
                                           or (s["port"] == SSH and s["process"] == "sshd")):
            continue
        wrong.append(s)
    assert not wrong, f"{name}: sockets not on the cluster address or loopback, nor in docs/security.md: {wrong}"
    # every documented port is in use, where the table says
    on_mine = {s["port"] for s in sockets if s["address"] == mine}
    on_all = {s["port"] for s in sockets if s["address"] in EVERYWHERE}
    assert set(bound) <= on_mine, f"{name}: not on {mine}: {set(bound) - on_mine}"
    assert set(everywhere) <= on_all, f"{name}: not listening: {set(everywhere) - on_all}"
    # the dashboard and the store are on the cluster address only, not on every interface
    assert not set(bound) & on_all, f"{name}: on every interface: {set(bound) & on_all}"


# Prints {key: HTTP status or "error: ..."} for the {key: url} of argv[1].
HTTP_STATUS = r"""
import json, sys, urllib.error, urllib.request
out = {}
for key, url in json.loads(sys.argv[1]).items():
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            out[key] = resp.status
    except urllib.error.HTTPError as exc:
        out[key] = exc.code
    except OSError as exc:
        out[key] = f"error: {exc}"
print(json.dumps(out))
"""


STORE_PING = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    s.sendall(b"PING\\r\\n")
    print(s.recv(200).decode(errors="replace").strip())
"""


def test_what_an_unauthenticated_client_gets_from_each_port():
    """From the last Ray node, with no token: one harmless gRPC call per Ray gRPC
    port of each node (and one worker port), an HTTP GET on each HTTP port, PING
    on the store."""
    prober = NODES[-1]
    grpc_methods = {6333: "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
                    10001: "/ray.rpc.RayletDriver/ClusterInfo",
                    6340: "/ray.rpc.NodeManagerService/GetNodeStats",
                    6341: "/ray.rpc.ObjectManagerService/Pull",
                    6343: "/ray.rpc.ReporterService/HealthCheck"}
    targets = []
    for name in NODES:
        ports = expected_ports(name)
        targets += [f"{address(name)}:{p}={m}" for p, m in grpc_methods.items() if p in ports]
        workers = sorted(s["port"] for s in listening(name) if s["port"] in WORKER_RANGE)
        if workers:
            targets.append(f"{address(name)}:{workers[0]}=/ray.rpc.CoreWorkerService/NumPendingTasks")
    out = node(prober).check_output(
        f"env -u RAY_AUTH_MODE -u RAY_AUTH_TOKEN -u RAY_AUTH_TOKEN_PATH {RAY}/bin/python "
        f"-c {shlex.quote(PROBE.read_text())} {' '.join(shlex.quote(t) for t in targets)}")
    grpc_results = json.loads(out)
    # HTTP from the same member (the host firewall lets only members reach these ports)
    http_targets = {f"{name}:{port}{path}": f"http://{address(name)}:{port}{path}"
                    for name in NODES
                    for port, path in ((8265, "/api/jobs/"), (8266, "/api/studies"), (6344, "/api/job_agent/jobs/"), (6342, "/"),
                                       (6345, "/metrics"), (44217, "/metrics"), (44227, "/metrics"))
                    if port in expected_ports(name)}
    http = json.loads(node(prober).check_output(
        f"python3 -c {shlex.quote(HTTP_STATUS)} {shlex.quote(json.dumps(http_targets))}"))
    # PING on the store from the same member, in the protocol's inline form
    # (the prober need not be a store host with keydb-cli)
    store = {}
    for name in RUNNER.get_hosts("keydb"):
        store[f"{name}:6379"] = node(prober).check_output(
            f"python3 -c {shlex.quote(STORE_PING)} {shlex.quote(address(name))} 6379")
    record(unauthenticated={"grpc": grpc_results, "http": http, "store": store})
    # every gRPC server, the job API and the store refuse a client without credentials
    refused = {t: c for t, c in grpc_results.items() if c == "UNAUTHENTICATED"}
    assert refused == grpc_results, f"answered without the token: {set(grpc_results) - set(refused)}"
    assert http[f"{HEAD}:8265/api/jobs/"] == 401
    assert http[f"{HEAD}:8266/api/studies"] == 401  # optuna-dashboard: the same token
    assert all(code == 401 for key, code in http.items() if ":6344/" in key), http
    assert all("NOAUTH" in reply for reply in store.values()), store


# ------------------------------------------------------------------ host firewall
# Prints {"address:port": "open" | "refused" | "error: ..."} for each argument.
CONNECT = r"""
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        out[target] = "open"
    except ConnectionRefusedError:
        out[target] = "refused"
    except OSError as exc:
        out[target] = f"error: {exc}"
print(json.dumps(out))
"""
PEOPLE_PORTS = (8265, 8266, 10001)  # firewall_workstations (this machine, in the test bed) reach these


def firewall_targets() -> list[str]:
    """Every documented listening port of each node and one of its core worker ports."""
    targets = []
    for name in NODES:
        ports = sorted(expected_ports(name))
        ports += sorted(s["port"] for s in listening(name) if s["port"] in WORKER_RANGE)[:1]
        targets += [f"{address(name)}:{p}" for p in ports]
    return targets


def connect_from_here(targets: list[str]) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", CONNECT, *targets], capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout)


def connect_from(name: str, targets: list[str]) -> dict[str, str]:
    return json.loads(node(name).check_output(
        f"python3 -c {shlex.quote(CONNECT)} {' '.join(shlex.quote(t) for t in targets)}"))


@pytest.mark.parametrize("name", NODES)
def test_the_firewall_table_is_loaded_at_boot_and_matches_its_file(name):
    host = node(name)
    assert host.check_output("systemctl is-enabled hpo-firewall") == "enabled"
    assert host.check_output("systemctl is-active hpo-firewall") == "active"
    table = host.check_output("nft list table inet hpo_cluster")
    for other in NODES:
        assert address(other) in table, f"{name}: member {other} missing from\n{table}"
    assert "reject with tcp reset" in table
    # every documented port of the node and the core workers' range are named
    # (nft prints neighbouring ports as one range: 6340-6345)
    named = [range(int(a), int(b or a) + 1)
             for a, b in re.findall(r"\b(\d+)(?:-(\d+))?\b", table.split("dport", 1)[1].split("}", 1)[0])]
    missing = [p for p in [*expected_ports(name), WORKER_RANGE.start, WORKER_RANGE.stop - 1]
               if not any(p in r for r in named)]
    assert not missing, f"{name}: ports not in the table: {missing}\n{table}"
    # SSH is in no rule: the table cannot lock Ansible out
    assert not re.search(r"dport[^\n]*\b22\b", table), table


def test_the_firewall_lets_members_reach_every_port_and_the_outsider_only_the_dashboard():
    targets = firewall_targets()
    member = connect_from(NODES[-1], targets)
    outsider = connect_from_here(targets)
    ssh = connect_from_here([f"{address(n)}:{SSH}" for n in NODES])
    record(firewall={"from member " + NODES[-1]: member, "from this machine (a workstation)": outsider,
                     "ssh from this machine": ssh})
    people = {f"{address(HEAD)}:{p}" for p in PEOPLE_PORTS}
    assert people <= set(targets)
    assert all(v == "open" for v in member.values()), member
    assert {t for t, v in outsider.items() if v == "open"} == people, outsider
    assert all(outsider[t] == "refused" for t in targets if t not in people), outsider
    assert set(ssh.values()) == {"open"}, ssh


def test_the_firewall_off_removes_what_it_added_and_on_again_restores_it():
    gcs = f"{address(HEAD)}:6333"
    off = ansible_playbook("site.yml", "--tags", "firewall", "-e", "firewall_enabled=false")
    assert off.returncode == 0, off.stdout[-4000:]
    for name in NODES:
        host = node(name)
        assert host.run("nft list table inet hpo_cluster").rc != 0, f"{name}: table left"
        assert not host.file("/etc/systemd/system/hpo-firewall.service").exists
        assert not host.file("/etc/hpo-cluster/firewall").exists
    assert connect_from_here([gcs]) == {gcs: "open"}
    on = ansible_playbook("site.yml", "--tags", "firewall")
    assert on.returncode == 0, on.stdout[-4000:]
    assert connect_from_here([gcs]) == {gcs: "refused"}
    again = ansible_playbook("site.yml", "--tags", "firewall")
    assert again.returncode == 0 and all(c == 0 for c, _ in recap(again.stdout).values()), recap(again.stdout)
    assert ray_alive_nodes() == len(NODES)


# ------------------------------------------------------------------ store credential
def test_the_workers_store_user_cannot_administer_the_store_and_the_studies_ran_with_it():
    name = NODES[0]
    env = node(name).check_output("grep -c '^HPO_KEYDB_USERNAME=\"hpo-worker\"$' /etc/hpo-worker/keydb.env")
    assert env == "1"
    script = (
        "import os, redis\n"
        "ep = os.environ['HPO_KEYDB_ENDPOINTS'].split(',')[0]\n"
        "h, _, p = ep.rpartition(':')\n"
        "c = redis.Redis(host=h, port=int(p), username=os.environ['HPO_KEYDB_USERNAME'],"
        " password=os.environ['HPO_KEYDB_PASSWORD'])\n"
        "for cmd in (['CONFIG', 'GET', 'requirepass'], ['FLUSHALL'], ['KEYS', '*']):\n"
        "    try:\n"
        "        c.execute_command(*cmd); print(cmd[0], 'ALLOWED')\n"
        "    except redis.exceptions.NoPermissionError as e:\n"
        "        print(cmd[0], 'NOPERM')\n"
        "print('PING', c.ping())\n"
    )
    out = node(name).check_output(with_store_env(f"{VENV}/bin/python -c {shlex.quote(script)}"))
    assert out.split("\n") == ["CONFIG NOPERM", "FLUSHALL NOPERM", "KEYS NOPERM", "PING True"], out

    # The workers did all their work with that user: the sample study has
    # completed trials (test_cluster.py checks it reached its budget), and no
    # worker's log shows a refused command.
    assert any(t["state"] == "COMPLETE" for t in study_trials(name, "digits-svc"))
    for worker in RUNNER.get_hosts("optuna_workers"):
        for study in ("digits-svc", "slow"):
            log = node(worker).check_output(f"journalctl -u hpo-worker@{study} --no-pager -o cat")
            assert "NOPERM" not in log and "no permissions" not in log, f"{worker} {study}: {log[-2000:]}"
