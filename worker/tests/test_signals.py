"""SIGTERM, SIGINT and SIGKILL on real worker subprocesses; states checked in storage."""

import collections
import signal
import time

from conftest import PASSWORD, load_trials, read_evals, start_worker, wait_for, worker_env, write_spec
from hpo_worker.store import Store

SPACE = {"x": {"type": "int", "low": 0, "high": 9}, "y": {"type": "int", "low": 0, "high": 4}}


def starts(evals):
    return read_evals(evals, "start")


def claims(endpoint, study):
    s = Store([endpoint], password=PASSWORD)
    s.elect(wait=5)
    return s.writer.hgetall(s.claims_key(study))


def test_sigterm_ends_trial_requeues_and_exits_zero(servers, tmp_path):
    r = servers("t")
    spec = write_spec(tmp_path / "s.yaml", name="term", space=SPACE, budget={"n_trials": 5})
    evals = tmp_path / "e.jsonl"
    p = start_worker(spec, [r.endpoint], worker_env(evals, sleep=60), processes=3, log=tmp_path / "w.log")
    wait_for(lambda: len(starts(evals)) == 3, what="3 trials in flight")
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0, (tmp_path / "w.log").read_text()[-3000:]
    stop_s = time.monotonic() - t0
    assert stop_s < 5, f"SIGTERM took {stop_s:.2f}s"
    trials = load_trials(r.endpoint, "term")
    # a worker whose first draw collided with another's running params ends that trial
    # PRUNED (duplicate) and draws again: those are not part of the check
    trials = [t for t in trials if "duplicate_of" not in t.user_attrs.get("hpo", {})]
    states = collections.Counter(t.state.name for t in trials)
    assert states == {"FAIL": 3, "WAITING": 3}, states
    in_flight = sorted(tuple(sorted(e["params"].items())) for e in starts(evals))
    failed = sorted(tuple(sorted(t.params.items())) for t in trials if t.state.name == "FAIL")
    requeued = sorted(tuple(sorted(t.system_attrs["fixed_params"].items())) for t in trials
                      if t.state.name == "WAITING")
    assert failed == in_flight == requeued
    assert claims(r.endpoint, "term") == {}, "the claims of ended trials are released"
    print(f"SIGTERM to clean exit of 3 processes: {stop_s:.2f}s")

    # the requeued params are evaluated first by the next worker, once each
    evals2 = tmp_path / "e2.jsonl"
    p2 = start_worker(spec, [r.endpoint], worker_env(evals2, sleep=0), log=tmp_path / "w2.log")
    assert p2.wait(60) == 0
    first = [tuple(sorted(e["params"].items())) for e in starts(evals2)][:3]
    assert sorted(first) == in_flight
    assert collections.Counter(t.state.name for t in load_trials(r.endpoint, "term"))["RUNNING"] == 0


def test_sigint_finishes_trial_then_exits(servers, tmp_path):
    r = servers("i")
    spec = write_spec(tmp_path / "s.yaml", name="int", space=SPACE, budget={"n_trials": 50})
    evals = tmp_path / "e.jsonl"
    p = start_worker(spec, [r.endpoint], worker_env(evals, sleep=1.5), log=tmp_path / "w.log")
    wait_for(lambda: len(starts(evals)) == 1, what="a trial in flight")
    p.send_signal(signal.SIGINT)
    assert p.wait(30) == 0, (tmp_path / "w.log").read_text()[-3000:]
    trials = load_trials(r.endpoint, "int")
    assert [t.state.name for t in trials] == ["COMPLETE"]
    ends = read_evals(evals, "end")
    assert len(ends) == 1 and trials[0].params == ends[0]["params"]


def test_second_sigint_acts_as_sigterm(servers, tmp_path):
    r = servers("ii")
    spec = write_spec(tmp_path / "s.yaml", name="int2", space=SPACE, budget={"n_trials": 50})
    evals = tmp_path / "e.jsonl"
    p = start_worker(spec, [r.endpoint], worker_env(evals, sleep=60), log=tmp_path / "w.log")
    wait_for(lambda: len(starts(evals)) == 1, what="a trial in flight")
    p.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert p.poll() is None, "one SIGINT must let the trial finish"
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == 0
    states = sorted(t.state.name for t in load_trials(r.endpoint, "int2"))
    assert states == ["FAIL", "WAITING"]


def test_sigkill_trial_reaped_and_requeued_slow_trial_kept(servers, tmp_path):
    r = servers("k")
    # heartbeat every 0.3 s, TTL 1.5 s: a dead worker's trial is reaped within ~1.8 s
    spec = write_spec(tmp_path / "s.yaml", name="kill", space=SPACE, budget={"timeout": 8})
    e_dead, e_slow, e_live = tmp_path / "dead.jsonl", tmp_path / "slow.jsonl", tmp_path / "live.jsonl"
    dead = start_worker(spec, [r.endpoint], worker_env(e_dead, sleep=60), host="dead", log=tmp_path / "d.log")
    # a slow but alive trial (5 s, longer than the 1.5 s TTL) must never be reaped
    slow = start_worker(spec, [r.endpoint], worker_env(e_slow, sleep=5), host="slow", log=tmp_path / "s.log")
    live = start_worker(spec, [r.endpoint], worker_env(e_live, sleep=0.05), host="live", log=tmp_path / "l.log")
    wait_for(lambda: len(starts(e_dead)) == 1 and starts(e_live) and starts(e_slow), what="all three working")
    dead.kill()
    dead.wait(10)
    t_kill = time.time()
    killed_params = starts(e_dead)[0]["params"]
    assert live.wait(60) == 0, (tmp_path / "l.log").read_text()[-3000:]
    assert slow.wait(60) == 0, (tmp_path / "s.log").read_text()[-3000:]
    trials = load_trials(r.endpoint, "kill")
    by_host = collections.defaultdict(list)
    for t in trials:
        by_host[t.user_attrs.get("hpo", {}).get("host")].append(t)
    # the dead worker may also have drawn params another worker was running (PRUNED as a
    # duplicate); the trial it was evaluating when killed is the one that must be FAILed
    dead_eval = [t for t in by_host["dead"] if t.params == starts(e_dead)[0]["params"]
                 and "duplicate_of" not in t.user_attrs["hpo"]]
    assert [t.state.name for t in dead_eval] == ["FAIL"], [(t.number, t.state.name) for t in by_host["dead"]]
    slow_evaluated = [t for t in by_host["slow"] if t.params in [e["params"] for e in starts(e_slow)]
                      and "reused_from" not in t.user_attrs["hpo"] and "duplicate_of" not in t.user_attrs["hpo"]]
    assert slow_evaluated and all(t.state.name == "COMPLETE" for t in slow_evaluated), \
        [(t.number, t.state.name) for t in by_host["slow"]]
    assert not any(t.state.name == "FAIL" for t in by_host["slow"])
    assert not any(t.state.name == "RUNNING" for t in trials)
    # the reaped params were requeued and evaluated by a live worker
    requeued = [t for t in trials if t.user_attrs.get("hpo_requeued_from") == dead_eval[0].number]
    assert len(requeued) == 1 and requeued[0].params == killed_params
    redone = [e for e in starts(e_live) + starts(e_slow) if e["params"] == killed_params]
    assert len(redone) == 1
    grace = redone[0]["t"] - t_kill
    assert grace < 6, f"reaped after {grace:.1f}s (TTL 1.5 s + interval 0.3 s, plus a loaded machine)"
    print(f"SIGKILLed trial re-evaluated {grace:.2f}s after the kill")


def test_sigterm_while_store_is_down_still_exits_zero(servers, tmp_path):
    r = servers("d")
    spec = write_spec(tmp_path / "s.yaml", name="down", space=SPACE, budget={"n_trials": 5})
    evals = tmp_path / "e.jsonl"
    p = start_worker(spec, [r.endpoint], worker_env(evals, sleep=60), processes=2, log=tmp_path / "w.log")
    wait_for(lambda: len(starts(evals)) == 2, what="2 trials in flight")
    r.kill()
    time.sleep(1.0)  # the heartbeat threads notice and start electing
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0, (tmp_path / "w.log").read_text()[-3000:]
    assert time.monotonic() - t0 < 10
