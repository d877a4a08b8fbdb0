"""The cluster scenario's study on real KeyDB through faults.

Everything acts on the real cluster site.yml converged: KeyDB 6.3.4 from its
own packages on two nodes (active multi-master replicas, rejoin guard in
ExecStartPre), hpo-worker@chaos on three nodes (2 processes each). In the
middle of the study the verifier
1. kills the writer master's keydb-server with SIGKILL (systemd restarts it;
   the rejoin guard moves its data aside and it resyncs from the survivor),
2. cuts the power of the node of the next writer master (`bin/testbed crash`:
   its link goes down, then all its processes are killed, so its KeyDB and
   its workers vanish without closing anything) and boots it again
   (bin/testbed up), starting its worker again (the unit is left stopped by
   this scenario's converge so the verifier starts it),
then waits for the study to finish and checks: no result lost (every value
the objective logged is COMPLETE in the store), no params evaluated twice,
no trial RUNNING, both masters' journals and claims identical, one writer
record. Figures go to .cache/cluster-chaos-figures.json. Trials are read with
`hpo-worker trials --json` (molecule/_shared/verify_helpers.py).
"""

from __future__ import annotations

import collections
import datetime
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))
from verify_helpers import PROJECT, RUNNER, VENV, node, ray_alive_nodes, recorder, wait_for, with_store_env  # noqa: E402
from verify_helpers import trials as study_trials  # noqa: E402

NODES = sorted(RUNNER.get_hosts("optuna_workers"))
MASTERS = sorted(RUNNER.get_hosts("keydb"))
CLUSTER = "cluster"
record = recorder("cluster-chaos-figures.json")
STUDY = "chaos"
SLOW = "slow"  # the cluster scenario's long study, running on every node through the faults
N_TRIALS = 800
# An evaluation that a node finished this long before its power cut may have died with it:
# its result was in that node's memory, or on its KeyDB (the writer) and not yet on the
# other master (replication is asynchronous; WAIT gives up after 1 s).
CUT_WINDOW_S = 3.0
EVALS = "/var/lib/hpo-worker/evals.jsonl"  # the objective's log (its working directory)
# Each master's view: writer record, journal and claims digests.
MASTERS_STATE = r"""
import hashlib, json, os
import redis
out = {}
for ep in os.environ["HPO_KEYDB_ENDPOINTS"].split(","):
    host, _, port = ep.rpartition(":")
    try:
        c = redis.Redis(host=host, port=int(port), username=os.environ.get("HPO_KEYDB_USERNAME") or None,
                        password=os.environ["HPO_KEYDB_PASSWORD"], decode_responses=True,
                        socket_timeout=5, socket_connect_timeout=2)
        journal = c.lrange("hpo:journal:chaos", 0, -1)
        claims = sorted(c.hgetall("hpo:claims:chaos").items())
        info = c.info("replication")
        out[ep] = {"writer": c.get("hpo:writer"), "journal": len(journal),
                   "journal_sha": hashlib.sha256("\n".join(journal).encode()).hexdigest(),
                   "claims_sha": hashlib.sha256(json.dumps(claims).encode()).hexdigest(),
                   "links_up": all(v == "up" for k, v in info.items() if k.endswith("link_status"))}
    except Exception as exc:
        out[ep] = {"error": repr(exc)}
print(json.dumps(out))
"""

# A fresh start: every key of the study's namespace deleted on every master (the
# verifier can run again on a converged cluster: molecule verify -s cluster).
RESET = r"""
import json, os
import redis
for ep in os.environ["HPO_KEYDB_ENDPOINTS"].split(","):
    host, _, port = ep.rpartition(":")
    c = redis.Redis(host=host, port=int(port), username=os.environ.get("HPO_KEYDB_USERNAME") or None,
                    password=os.environ["HPO_KEYDB_PASSWORD"])
    keys = list(c.scan_iter("hpo:*"))
    if keys:
        c.delete(*keys)
print(json.dumps("ok"))
"""



def address(name: str) -> str:
    return RUNNER.get_variables(name)["cluster_address"]


def on_store(name: str, script: str):
    """Run a Python script on a node with the workers' store settings; parse its JSON output."""
    result = node(name).run(with_store_env(f"{VENV}/bin/python -c {shlex.quote(script)}"))
    assert result.rc == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


# Nodes this verifier cut the power of (until it boots them again): never asked.
DOWN: set[str] = set()
# Node -> time.monotonic() when bin/testbed had booted it again.
BOOTED: dict[str, float] = {}


def on_some_node(probe):
    """probe(name) on the first node that is up; an SSH failure (a node going down
    under us) moves on to the next node."""
    failure = None
    for name in NODES:
        if name in DOWN:
            continue
        try:
            return probe(name)
        except RuntimeError as exc:  # testinfra: ssh exited 255, the node is not reachable
            failure = exc
    raise AssertionError(f"no node answers: {failure}")


def masters_state() -> dict:
    return on_some_node(lambda name: on_store(name, MASTERS_STATE))


def trials() -> list[dict]:
    return on_some_node(lambda name: study_trials(name, STUDY))


def complete() -> int:
    return sum(1 for t in trials() if t["state"] == "COMPLETE")


def writer_host() -> tuple[str, str]:
    """(inventory name of the writer master, its record), read from the masters that answer."""
    records = [s["writer"] for s in masters_state().values() if s.get("writer")]
    rec = max(records, key=lambda r: int(r.split()[0]))
    ep = rec.split()[1]
    return next(n for n in MASTERS if ep.startswith(address(n) + ":")), rec


def new_record_on_survivor(old: str):
    """The record of a master that answers, once it names another writer with a higher epoch."""
    def probe():
        for s in masters_state().values():
            rec = s.get("writer")
            if rec and int(rec.split()[0]) > int(old.split()[0]):
                return rec
        return None
    return probe


def links_up() -> bool:
    state = masters_state()
    return len(state) == len(MASTERS) and all(s.get("links_up") for s in state.values())


def all_finished() -> bool:
    """Every node's worker exited (budget reached): the unit stays active (exited)."""
    return all(node(n).run(f"systemctl show -p SubState --value hpo-worker@{STUDY}.service").stdout.strip()
               == "exited" for n in NODES)


def boot_all() -> None:
    """Boot every node that is not running (bin/testbed up is idempotent)."""
    boot = subprocess.run([str(PROJECT / "bin" / "testbed"), "--cluster", CLUSTER, "up", *sorted(NODES)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert boot.returncode == 0, boot.stderr[-3000:]


@pytest.fixture(scope="module", autouse=True)
def every_node_up():
    """A node an earlier run of this verifier cut the power of is booted first."""
    boot_all()
    wait_for("the store's links up", links_up, timeout=120, interval=1)


def power_off_the_writer_node() -> tuple[str, str, float, str, tuple[float, float]]:
    """Cut the power of the writer master's node mid-study, wait for progress, boot it again."""
    victim2, rec2 = writer_host()
    t0 = time.monotonic()
    t_cut = time.time()
    DOWN.add(victim2)
    # a power cut as the others see it: the node's link goes down, then all its processes
    # die; nothing is shut down in order, its connections just go silent
    cut = subprocess.run([str(PROJECT / "bin" / "testbed"), "--cluster", CLUSTER, "crash", victim2],
                         capture_output=True, text=True, timeout=60, check=False)
    assert cut.returncode == 0, cut.stderr[-3000:]
    cut_span = (t_cut, time.time())  # the link went down somewhere in this span
    new2 = wait_for("a new writer after the power-off", new_record_on_survivor(rec2), timeout=120, interval=0.5)
    n = complete()
    wait_for("progress without the node", lambda: complete() > n, timeout=120, interval=0.5)
    failover_node = time.monotonic() - t0
    wait_for("more progress without the node", lambda: complete() >= n + 40, timeout=300, interval=2)
    boot_all()
    BOOTED[victim2] = time.monotonic()
    DOWN.discard(victim2)
    wait_for("keydb-server active on the booted node",
             lambda: node(victim2).run("systemctl is-active keydb-server").stdout.strip() == "active", 120)
    wait_for("links up after the boot", links_up, timeout=120, interval=1)
    node(victim2).check_output(f"systemctl start hpo-worker@{STUDY}.service")
    return rec2, new2, failover_node, victim2, cut_span


def longest_pause(all_trials: list[dict], since: float, horizon: float = 120.0) -> float:
    """The longest time without a new COMPLETE result in the store, from ``since`` over the
    next ``horizon`` seconds (the store's own clock of the failover, not the verifier's)."""
    done = sorted(datetime.datetime.fromisoformat(t["datetime_complete"]).replace(
        tzinfo=datetime.timezone.utc).timestamp()
        for t in all_trials if t["state"] == "COMPLETE" and t.get("datetime_complete"))
    marks = [since] + [d for d in done if since < d <= since + horizon]
    return max((b - a for a, b in zip(marks, marks[1:])), default=horizon)


def test_keydb_masters_are_real_keydb() -> None:
    for name in MASTERS:
        out = node(name).check_output("keydb-server --version")
        assert "v=6.3.4" in out, out
    assert links_up(), masters_state()


def test_study_survives_writer_kill_and_node_power_off() -> None:
    for name in NODES:
        node(name).check_output(f"systemctl stop hpo-worker@{STUDY}.service")
        node(name).run(f"rm -f {EVALS}")
    on_store(NODES[0], RESET)
    for name in NODES:
        node(name).check_output(f"systemctl start hpo-worker@{STUDY}.service")
    wait_for("40 COMPLETE trials", lambda: complete() >= 40, timeout=300, interval=2)

    # 1. SIGKILL of the writer's keydb-server; systemd restarts it at once, through the
    # rejoin guard. The workers either promote the survivor or, if the restarted master
    # already resynced and holds the record again, keep it: both are one writer.
    victim, rec = writer_host()
    n = complete()
    t0 = time.monotonic()
    node(victim).check_output("pkill -9 -x keydb-server")
    wait_for("progress after the kill", lambda: complete() > n, timeout=120, interval=0.5)
    failover_kill = time.monotonic() - t0
    wait_for("the killed master back with its links up", links_up, timeout=120, interval=1)
    new = writer_host()[1]
    stale = node(victim).check_output("ls /var/lib/keydb/stale")
    assert stale.strip(), "the rejoin guard moved the old data aside"
    n = complete()
    wait_for("progress after the kill", lambda: complete() >= n + 40, timeout=300, interval=2)

    # 2. the next writer's whole node loses power, then boots again
    left = N_TRIALS - complete()
    assert left >= 100, (f"only {left} trials of the budget left before the power-off: too few to see"
                         " progress without the node (raise n_trials or the objective's sleep)")
    rec2, new2, failover_node, cut_node, cut_span = power_off_the_writer_node()

    # the study runs to its budget on every node
    wait_for("every worker to reach the budget and exit", all_finished, timeout=900, interval=3)
    for name in NODES:
        status = node(name).check_output(f"systemctl show -p ExecMainStatus --value hpo-worker@{STUDY}.service")
        assert status.strip() == "0", (name, status)

    wait_for("identical journals on both masters", lambda: len({
        (s.get("writer"), s.get("journal_sha"), s.get("claims_sha")) for s in masters_state().values()}) == 1,
        timeout=30)
    state = masters_state()
    all_trials = trials()
    states = collections.Counter(t["state"] for t in all_trials)
    stored = {json.dumps(t["params"], sort_keys=True): t["value"] for t in all_trials if t["state"] == "COMPLETE"}
    evals = [json.loads(line) for name in NODES
             for line in node(name).file(EVALS).content_string.splitlines() if line.strip()]
    per_point = collections.Counter(json.dumps(e["params"], sort_keys=True) for e in evals)
    # An evaluation the cut node finished just before its power went (its result only in
    # that node's memory or on its own KeyDB, not yet replicated) can be lost and its
    # params evaluated again by the others: nothing can save it. Those are counted apart;
    # every other evaluation must be stored exactly once.
    died = {json.dumps(e["params"], sort_keys=True) for e in evals
            if e["host"] == cut_node and cut_span[0] - CUT_WINDOW_S <= e["t"] <= cut_span[1]}
    lost = [p for p in per_point if p not in stored and p not in died]
    twice = [p for p, k in per_point.items() if k > 1 and p not in died]
    died_lost = [p for p in died if p not in stored]
    died_again = [p for p in died if per_point[p] > 1]
    wrong = [p for p, v in stored.items() if v != float(sum(json.loads(p).values()))]
    record(progress_after_kill_s=round(failover_kill, 2), verifier_saw_progress_after_cut_s=round(failover_node, 2),
           writer_records=[rec, new, rec2, new2], final_writer=next(iter(state.values()))["writer"],
           trials=dict(states), evaluations=len(evals), lost=len(lost), evaluated_twice=len(twice),
           longest_pause_of_results_after_cut_s=round(longest_pause(all_trials, cut_span[0]), 2),
           finished_in_the_cut_node_last_s=len(died), of_those_lost=len(died_lost),
           of_those_evaluated_again=len(died_again),
           wrong_values=len(wrong), journal_entries=next(iter(state.values()))["journal"])
    assert states["RUNNING"] == 0, states
    assert states["COMPLETE"] >= N_TRIALS, states
    assert not lost, f"{len(lost)} evaluated params have no COMPLETE trial: {lost[:5]}"
    assert not twice, f"{len(twice)} params evaluated twice: {twice[:5]}"
    assert not wrong, f"{len(wrong)} COMPLETE values belong to other params: {wrong[:5]}"


def test_the_cut_node_is_back_in_ray_and_runs_its_studies() -> None:
    """After the power cut and the boot, nobody logs in: the node's Ray joins the
    cluster again and the workers of its enabled studies run again (systemd starts
    them at boot). The tests after this one need every node."""
    assert BOOTED, "the power-cut test did not boot a node"
    (name, booted), = BOOTED.items()
    ray_nodes = len(RUNNER.get_hosts("ray_head")) + len(RUNNER.get_hosts("ray_workers"))
    wait_for(f"{ray_nodes} alive Ray nodes after {name}'s boot", lambda: ray_alive_nodes() == ray_nodes,
             timeout=300, interval=2)
    record(ray_alive_again_after_boot_s=round(time.monotonic() - booted, 1), power_cut_node=name)
    state = node(name).check_output(f"systemctl is-active hpo-worker@{SLOW}.service")
    assert state.strip() == "active", f"hpo-worker@{SLOW} on {name} after the boot: {state}"
