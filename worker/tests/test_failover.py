"""Failover: primary + replica (redis-server stands in for two KeyDB masters).

The writer is SIGKILLed mid-study; every worker must follow to the standby,
no COMPLETE trial may be lost, none left RUNNING, and when the old writer
returns (with its old data, as a master) it must not become a second writer.
"""

import collections
import json
import time

from conftest import load_trials, read_evals, start_worker, wait_for, worker_env, write_spec


def ends(evals):
    return read_evals(evals, "end")


def key(params):
    return tuple(sorted(params.items()))


def test_writer_killed_workers_follow_standby_old_writer_fenced(servers, tmp_path):
    m1 = servers("m", persist=True)
    m2 = servers("s", replicaof=m1)
    endpoints = [m1.endpoint, m2.endpoint]
    spec = write_spec(tmp_path / "s.yaml", name="fo",
                      space={"x": {"type": "int", "low": 0, "high": 11}, "y": {"type": "int", "low": 0, "high": 9}},
                      budget={"n_trials": 110})
    evals = tmp_path / "e.jsonl"
    p = start_worker(spec, endpoints, worker_env(evals, sleep=0.15), processes=4, log=tmp_path / "w.log")
    wait_for(lambda: len(ends(evals)) >= 30, 60, what="30 evaluations before the kill")

    before = {key(t.params): t.value for t in load_trials(m1.endpoint, "fo") if t.state.name == "COMPLETE"}
    m1.kill()
    t_kill = time.time()
    assert before

    wait_for(lambda: len([e for e in ends(evals) if e["t"] > t_kill]) >= 20, 60, what="progress on the standby")
    # the old writer comes back with its old data, as a master (the worst case for Redis)
    m1.start(replicaof=None)
    old_len = m1.client().llen("hpo:journal:fo")
    old_claims = m1.client().hgetall("hpo:claims:fo")
    # a worker that starts now must pick the standby too
    late_evals = tmp_path / "late.jsonl"
    late = start_worker(spec, endpoints, worker_env(late_evals, sleep=0.05), host="late", log=tmp_path / "late.log")

    assert p.wait(120) == 0, (tmp_path / "w.log").read_text()[-4000:]
    assert late.wait(120) == 0, (tmp_path / "late.log").read_text()[-4000:]

    m2c = m2.client()
    assert m2c.get("hpo:writer") == f"2 {m2.endpoint}"
    assert m2c.info("replication")["role"] == "master"
    # the returned master took no journal entry or claim, and it now names the new writer
    assert m1.client().llen("hpo:journal:fo") == old_len
    assert m1.client().hgetall("hpo:claims:fo") == old_claims
    assert m1.client().get("hpo:writer") == f"2 {m2.endpoint}", "the stale master is fenced"

    trials = load_trials(m2.endpoint, "fo")
    states = collections.Counter(t.state.name for t in trials)
    assert states["RUNNING"] == 0, states
    assert states["COMPLETE"] >= 110, states
    after = {key(t.params): t.value for t in trials if t.state.name == "COMPLETE"}
    lost = set(before) - set(after)
    assert not lost, f"COMPLETE trials lost in failover: {lost}"
    # every one of the 4 workers kept working after the kill
    pids_after = {e["pid"] for e in ends(evals) if e["t"] > t_kill + 0.5}
    assert len(pids_after) == 4, pids_after
    # duplicates stayed away across the failover: a point evaluated twice only if its
    # first evaluation was cut by the failover and requeued
    log = (tmp_path / "w.log").read_text()
    assert "is the writer now (epoch 2" in log
    late_log = (tmp_path / "late.log").read_text()
    assert f"writer: 2 {m2.endpoint}" in late_log and "writer: 1 " not in late_log, late_log[-2000:]
    print(f"states after failover: {dict(states)}")


def test_write_under_a_stale_record_is_refused(servers):
    """The fencing check inside every write script: an old record writes nothing."""
    from conftest import PASSWORD
    from hpo_worker.store import Fenced, Store

    m1 = servers("m")
    m2 = servers("s", replicaof=m1)
    # endpoints listed replica first: a fresh group still starts on the primary
    stale = Store([m2.endpoint, m1.endpoint], password=PASSWORD)
    assert stale.elect(wait=5) == f"1 {m1.endpoint}"
    assert m2.client().info("replication")["role"] == "slave", "no replica promoted while the primary lives"
    fresh = Store([m2.endpoint, m1.endpoint], password=PASSWORD)
    fresh.elect(wait=5)
    # the primary dies; a second store promotes the replica; then the primary returns
    wait_for(lambda: m2.client().get("hpo:writer") == f"1 {m1.endpoint}", 10, "the record on the replica")
    m1.kill()
    fresh.elect(failed=m1.endpoint, wait=10)
    assert fresh.record == f"2 {m2.endpoint}"
    m1.start(replicaof=None)
    # the stale store still holds "1 m1" and its client points at m1, which answers again:
    # before fencing, m1 would accept it; fence_stale_masters writes the new record onto m1
    before = m1.client().get("hpo:writer")
    fresh.fence_stale_masters()
    assert m1.client().get("hpo:writer") == f"2 {m2.endpoint}" != before
    try:
        stale.claim("x", "fp", json.dumps({"owner": "stale", "state": "RUNNING"}))
    except Fenced as exc:
        assert "HPOFENCED" in str(exc)
    else:
        raise AssertionError("a write under a stale record was accepted")
    assert m1.client().hgetall("hpo:claims:x") == {} and m2.client().hgetall("hpo:claims:x") == {}
    # the stale store re-elects and lands on the new writer, never on the returned master
    assert stale.elect(wait=10) == f"2 {m2.endpoint}"


def test_follower_promotes_standby_even_if_record_never_replicated(servers):
    """A worker that followed a writer knows one existed, even if the standby never saw its record."""
    from conftest import PASSWORD
    from hpo_worker.store import Store

    # two masters; m1 is the one a fresh group starts on (masters tie: lowest endpoint text)
    m1, m2 = sorted([servers("m"), servers("s")], key=lambda r: r.endpoint)
    # m2: a standby that received nothing (no record)
    store = Store([m1.endpoint, m2.endpoint], password=PASSWORD)
    assert store.elect(wait=5) == f"1 {m1.endpoint}"
    assert m2.client().get("hpo:writer") is None
    m1.kill()
    assert store.elect(failed=m1.endpoint, wait=10) == f"2 {m2.endpoint}"
    # a store that never followed anyone does not promote a master that holds no record over a dead one
    m1.start(replicaof=None)
    newcomer = Store([m1.endpoint, m2.endpoint], password=PASSWORD)
    assert newcomer.elect(wait=5) == f"2 {m2.endpoint}"


def test_crossed_records_are_resolved_not_waited_on(servers):
    """A holds "1 B" and B holds "1 A": what two racing promotions on KeyDB active replicas
    left behind (each SET replicated onto the other). Built here on two standalone
    redis-servers, where it stays as set. A worker promotes one master at epoch 2 at once
    instead of waiting for a writer that names itself; so do workers listing them the other way."""
    from conftest import PASSWORD
    from hpo_worker.store import Store

    a, b = servers("a"), servers("b")
    a.client().set("hpo:writer", f"1 {b.endpoint}")
    b.client().set("hpo:writer", f"1 {a.endpoint}")
    t0 = time.monotonic()
    rec = Store([a.endpoint, b.endpoint], password=PASSWORD).elect(wait=10)
    assert time.monotonic() - t0 < 3, "elected without waiting"
    first = min(a.endpoint, b.endpoint)
    assert rec == f"2 {first}", rec
    assert Store([b.endpoint, a.endpoint], password=PASSWORD).elect(wait=5) == rec
