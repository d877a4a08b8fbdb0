"""The cluster scenario's last tests: they change the cluster for good, so
they run after test_cluster.py and test_security.py (conftest.py orders the
files). One rotates Ray's token with site.yml while the slow study runs (the
workers must not notice; Ray restarts head first and refuses the old token
after); the last one removes cluster-2, a KeyDB master, with
playbooks/remove-node.yml.

Figures (rotation time, trials completed during it, removal time) are printed
and written to .cache/cluster-figures.json in the project directory.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))
# Helpers of test_cluster.py and test_security.py (pytest put this directory
# on sys.path and imported them first: the same modules).
from test_cluster import DIGITS, NODES, SLOW, running_trial_of, trials, unit  # noqa: E402
from test_security import dashboard, token  # noqa: E402
from verify_helpers import RUNNER, ansible_playbook, node, ray_alive_nodes, recorder, wait_for  # noqa: E402

record = recorder("cluster-figures.json")


def ray_start_time(name: str) -> int:
    """When NAME's Ray unit last started (µs, CLOCK_MONOTONIC: the test-bed nodes share the kernel)."""
    return int(node(name).check_output("systemctl show ray -p ExecMainStartTimestampMonotonic --value"))


def test_a_new_ray_token_rolls_out_while_the_study_runs_and_no_trial_is_lost() -> None:
    """Second to last (it leaves the cluster on a token the inventory does not hold):
    site.yml with a new ray_auth_token restarts every Ray node, head first,
    without printing the token; the job API refuses the old token and takes
    the new one. The Optuna workers do not use Ray and must not notice while
    the slow study runs: same processes, every trial in flight finished, none failed."""
    head = RUNNER.get_hosts("ray_head")[0]
    ray_nodes = RUNNER.get_hosts("ray_head") + RUNNER.get_hosts("ray_workers")
    old, new = token(), "rotated-" + os.urandom(24).hex()
    started_before = {n: ray_start_time(n) for n in ray_nodes}
    pids = {n: unit(node(n), SLOW)["MainPID"] for n in NODES}
    before = trials(SLOW)
    failed_before = {t["number"] for t in before if t["state"] == "FAIL"}
    in_flight = {t["number"] for t in before if t["state"] == "RUNNING"}
    complete_before = sum(t["state"] == "COMPLETE" for t in before)
    assert in_flight, "the slow study must be running for this test"
    assert ray_alive_nodes() == len(ray_nodes)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"ray_auth_token": new}, f)
    os.chmod(f.name, 0o600)
    try:
        start = time.monotonic()
        run = ansible_playbook("../site.yml", "-e", f"@{f.name}", timeout=1200)
        rotation_seconds = time.monotonic() - start
    finally:
        os.unlink(f.name)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert new not in run.stdout and new not in run.stderr, "the playbook printed the token"
    assert ray_alive_nodes() == len(ray_nodes)
    started_after = {n: ray_start_time(n) for n in ray_nodes}
    assert all(started_after[n] > started_before[n] for n in ray_nodes), "every Ray node restarted"
    assert started_after[head] < min(started_after[n] for n in ray_nodes if n != head), "the head restarted first"
    assert dashboard("/api/jobs/", bearer=old)[0] == 403
    assert dashboard("/api/jobs/", bearer=new)[0] == 200

    def settled() -> list[dict] | None:
        every = trials(SLOW)
        done = {t["number"]: t["state"] for t in every}
        return every if all(done.get(n) != "RUNNING" for n in in_flight) else None

    after = wait_for("the trials in flight at the rotation to end", settled, timeout=60)
    failed_since = [t for t in after if t["state"] == "FAIL" and t["number"] not in failed_before]
    completed_since = sum(t["state"] == "COMPLETE" for t in after) - complete_before
    record(token_rotation_site_yml_s=round(rotation_seconds, 1), trials_completed_during_rotation=completed_since,
           trials_failed_during_rotation=len(failed_since), in_flight_at_rotation=len(in_flight))
    assert failed_since == [], failed_since
    assert all(t["state"] == "COMPLETE" for t in after if t["number"] in in_flight)
    assert completed_since > len(in_flight), "the study went on during the rotation"
    assert {n: unit(node(n), SLOW)["MainPID"] for n in NODES} == pids, "a worker was restarted"


def _store(host_name: str, *command: str) -> str:
    """One keydb-cli command on HOST_NAME's own KeyDB (words shell-quoted); its output."""
    password = RUNNER.get_variables(host_name)["keydb_password"]
    return node(host_name).check_output(
        f"REDISCLI_AUTH={password} keydb-cli -h 127.0.0.1 {' '.join(shlex.quote(w) for w in command)}")


def _persistent_keys(host_name: str) -> set[str]:
    """Keys without a TTL on HOST_NAME's store (heartbeats and claims expire by design)."""
    script = ("local out = {} for _, k in ipairs(redis.call('keys', '*')) do "
              "if redis.call('ttl', k) == -1 then table.insert(out, k) end end return out")
    return set(_store(host_name, "EVAL", script, "0").split())


def _main_pid(host, service: str) -> str:
    return host.check_output(f"systemctl show -p MainPID --value {service}")


def test_remove_a_machine_during_the_study() -> None:
    """LAST test, destructive: playbooks/remove-node.yml --limit cluster-2
    while the slow study runs. cluster-2 is a Ray worker, an Optuna worker
    and one of the two KeyDB masters: cluster-1 drops it from its replicaof
    list (REPLICAOF REMOVE) and keeps every key; the writer record names
    cluster-1. Nothing may run after it: the cluster is one node short
    afterwards."""
    leaving, staying = "cluster-2", ["cluster-1", "cluster-3"]
    primary = RUNNER.get_hosts("keydb")[0]
    services = {"cluster-1": ["ray.service", "keydb-server.service", f"hpo-worker@{SLOW}.service"],
                "cluster-3": ["ray.service", f"hpo-worker@{SLOW}.service"]}
    wait_for(f"a RUNNING trial on {leaving}", lambda: running_trial_of(leaving), timeout=60)
    pids = {n: {s: _main_pid(node(n), s) for s in services[n]} for n in staying}
    assert all(pid != "0" for p in pids.values() for pid in p.values()), pids
    keys_before = _persistent_keys(primary)
    assert len(keys_before) > 5, keys_before  # the studies' journals and records
    before = trials(SLOW)
    complete_before = sum(t["state"] == "COMPLETE" for t in before)
    assert ray_alive_nodes() == 3

    start = time.monotonic()
    run = ansible_playbook("remove-node.yml", "--limit", leaving, timeout=600)
    removal_seconds = time.monotonic() - start
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]

    after = trials(SLOW)
    left_running = [t for t in after if t["state"] == "RUNNING" and t["host"] == leaving]
    requeued = {t["requeued_from"]: t["requeue_reason"] for t in after if t["requeued_from"] is not None}
    ended_by_stop = [t for t in after if t["host"] == leaving and t["state"] == "FAIL"
                     and requeued.get(t["number"]) == "SIGTERM"]
    record(removal_seconds=round(removal_seconds, 1), running_on_removed_node=len(left_running),
           requeued_by_removal=len(ended_by_stop))
    assert left_running == [], left_running
    assert ended_by_stop, "the trial in flight on the removed node was not requeued"

    # No key lost on the remaining store node; the study goes on there.
    missing = keys_before - _persistent_keys(primary)
    assert missing == set(), f"keys lost on {primary}: {sorted(missing)[:20]}"
    # cluster-1 replicates from nobody now, and the workers' writer is cluster-1
    info = _store(primary, "INFO", "replication")
    assert "master_host" not in info, info
    writer = _store(primary, "GET", "hpo:writer").strip()
    assert writer.endswith(f" {RUNNER.get_variables(primary)['cluster_address']}:6379"), writer
    wait_for("the study to go on without the removed node",
             lambda: sum(t["state"] == "COMPLETE" for t in trials(SLOW)) > complete_before + 2, timeout=90)
    assert not any(t["host"] == leaving and t["state"] == "RUNNING" for t in trials(SLOW))

    # The other nodes' processes are the same; the removed node's are off.
    assert {n: {s: _main_pid(node(n), s) for s in services[n]} for n in staying} == pids
    gone = node(leaving)
    for service in ["ray.service", "ray-health.timer", "keydb-server.service",
                    f"hpo-worker@{SLOW}.service", f"hpo-worker@{DIGITS}.service"]:
        assert gone.run(f"systemctl is-active {service}").stdout.strip() in ("inactive", "failed"), service
        assert gone.run(f"systemctl is-enabled {service}").stdout.strip() == "disabled", service
    assert ray_alive_nodes() == 2
