"""Duplicate guard with 8 real worker processes on one redis-server."""

import collections
import json
import subprocess
import sys
import threading

from conftest import PASSWORD, load_trials, read_evals, start_worker, worker_env, write_spec
from hpo_worker.store import Store


def test_eight_workers_fifty_points_each_evaluated_once(servers, tmp_path):
    r = servers("w")
    spec = write_spec(tmp_path / "s.yaml", name="dedup",
                      sampler={"type": "tpe", "constant_liar": True, "n_startup_trials": 10},
                      space={"x": {"type": "int", "low": 0, "high": 9}, "y": {"type": "int", "low": 0, "high": 4}},
                      budget={"n_trials": 200})
    evals = tmp_path / "evals.jsonl"
    p = start_worker(spec, [r.endpoint], worker_env(evals, sleep=0.02), processes=8, log=tmp_path / "w.log")
    assert p.wait(240) == 0, (tmp_path / "w.log").read_text()[-3000:]

    trials = load_trials(r.endpoint, "dedup")
    started = [tuple(sorted(e["params"].items())) for e in read_evals(evals, "start")]
    counts = collections.Counter(started)
    assert counts and max(counts.values()) == 1, [k for k, v in counts.items() if v > 1]
    drawn = {tuple(sorted(t.params.items())) for t in trials if t.params}
    assert len(started) == len(drawn), (len(started), len(drawn))
    assert set(started) == drawn
    states = collections.Counter(t.state.name for t in trials)
    assert states["RUNNING"] == 0 and states["COMPLETE"] >= 200, states
    assert len(drawn) <= 50
    # trials that took a value say from which trial and host
    reused = [t for t in trials if "reused_from" in t.user_attrs.get("hpo", {})]
    assert reused, "with 200 trials on 50 points some must reuse a COMPLETE value"
    by_number = {t.number: t for t in trials}
    for t in reused:
        orig = by_number[t.user_attrs["hpo"]["reused_from"]]
        assert orig.params == t.params and orig.value == t.value
        assert t.user_attrs["hpo"]["reused_host"] == "h1"

    # the report agrees with the store
    rep = subprocess.run([sys.executable, "-m", "hpo_worker", "report", "--study", "dedup", "--endpoints", r.endpoint],
                         env=worker_env(evals), capture_output=True, text=True, timeout=60)
    assert rep.returncode == 0, rep.stderr
    lines = rep.stdout.splitlines()
    assert lines[0].endswith(" dedup")
    assert lines[1].startswith(f"COMPLETE: {states['COMPLETE']}  (evaluated {len(started)}, reused {len(reused)};")
    host = [ln.split() for ln in lines if ln.startswith("h1:")]
    assert len(host) == 1 and int(host[0][3]) == len(started)
    assert lines[-1].startswith("report took ")
    bad = subprocess.run([sys.executable, "-m", "hpo_worker", "report", "--study", "nope", "--endpoints", r.endpoint],
                         env=worker_env(evals), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no study named 'nope'" in bad.stderr


def test_claim_is_atomic_under_simultaneous_draws(servers):
    """32 threads claim the same fingerprint at the same instant: exactly one wins."""
    r = servers("c")
    store = Store([r.endpoint], password=PASSWORD)
    store.elect(wait=5)
    barrier = threading.Barrier(32)
    results = []

    def claim(i):
        barrier.wait()
        got = store.claim("race", "fp", json.dumps({"owner": f"w{i}", "state": "RUNNING"}))
        results.append((i, got))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, got in results if got is None]
    assert len(winners) == 1
    assert all(json.loads(got)["owner"] == f"w{winners[0]}" for _, got in results if got is not None)


def test_objective_gets_the_trial_when_it_asks(servers, tmp_path):
    r = servers("o")
    spec = write_spec(tmp_path / "s.yaml", name="withtrial", objective="objectives:with_trial",
                      budget={"n_trials": 3})
    p = start_worker(spec, [r.endpoint], worker_env(tmp_path / "e.jsonl"), log=tmp_path / "w.log")
    assert p.wait(60) == 0, (tmp_path / "w.log").read_text()[-2000:]
    done = [t for t in load_trials(r.endpoint, "withtrial") if t.state.name == "COMPLETE"]
    evaluated = [t for t in done if "reused_from" not in t.user_attrs["hpo"]]
    assert evaluated and all(t.user_attrs["seen_number"] == t.number for t in evaluated)


def test_multi_objective_nsga3_values_reused(servers, tmp_path):
    r = servers("mo")
    spec = write_spec(tmp_path / "s.yaml", name="mo", objective="objectives:two", direction=None,
                      directions=["minimize", "maximize"], sampler={"type": "nsga3", "population_size": 4},
                      space={"x": {"type": "int", "low": 0, "high": 2}, "y": {"type": "int", "low": 0, "high": 1}},
                      budget={"n_trials": 15})
    evals = tmp_path / "e.jsonl"
    p = start_worker(spec, [r.endpoint], worker_env(evals), processes=2, log=tmp_path / "w.log")
    assert p.wait(120) == 0, (tmp_path / "w.log").read_text()[-2000:]
    done = [t for t in load_trials(r.endpoint, "mo") if t.state.name == "COMPLETE"]
    assert len(done) >= 15
    assert all(t.values == [float(t.params["x"]), float(t.params["y"])] for t in done)
    started = [e for e in read_evals(evals, "start")]
    assert len(started) == len({json.dumps(e["params"], sort_keys=True) for e in started}) <= 6


def test_report_lists_every_study_sorted(servers, tmp_path):
    r = servers("rp")
    for name in ("zeta", "alpha"):
        spec = write_spec(tmp_path / f"{name}.yaml", name=name, budget={"n_trials": 4})
        p = start_worker(spec, [r.endpoint], worker_env(tmp_path / "e.jsonl"), host=f"host-{name}",
                         log=tmp_path / "w.log")
        assert p.wait(60) == 0, (tmp_path / "w.log").read_text()[-2000:]
    rep = subprocess.run([sys.executable, "-m", "hpo_worker", "report", "--endpoints", r.endpoint],
                         env=worker_env(tmp_path / "e.jsonl"), capture_output=True, text=True, timeout=60)
    assert rep.returncode == 0, rep.stderr
    heads = [ln for ln in rep.stdout.splitlines() if ln[:1].isdigit()]
    assert heads == ["0 alpha", "1 zeta"], rep.stdout
    assert "host-alpha:" in rep.stdout and "host-zeta:" in rep.stdout


def test_report_reads_a_store_whose_writer_record_is_missing(servers, tmp_path):
    """Issue 10 case 7: the master answers but holds no writer record (deleted, or a store
    written by an older tool): report reads it at once, read-only, instead of waiting 12 s
    and saying no master is reachable."""
    import time

    r = servers("nr")
    spec = write_spec(tmp_path / "s.yaml", name="norec", budget={"n_trials": 4})
    p = start_worker(spec, [r.endpoint], worker_env(tmp_path / "e.jsonl"), log=tmp_path / "w.log")
    assert p.wait(60) == 0, (tmp_path / "w.log").read_text()[-2000:]
    r.client().delete("hpo:writer")
    t0 = time.monotonic()
    rep = subprocess.run([sys.executable, "-m", "hpo_worker", "report", "--study", "norec", "--endpoints", r.endpoint],
                         env=worker_env(tmp_path / "e.jsonl"), capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert rep.returncode == 0, rep.stderr
    assert "COMPLETE: 4" in rep.stdout, rep.stdout
    assert took < 5, took
    assert r.client().get("hpo:writer") is None, "report wrote nothing"
