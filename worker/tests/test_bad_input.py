"""Issue 10: specs and objectives that users get wrong end with a clear error (exit 2,
nothing written) or a bounded run; no trial is left RUNNING. Real redis-server, real
hpo-worker subprocesses."""

import collections
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HERE, PASSWORD, load_trials, read_evals, start_worker, wait_for, worker_env, write_spec
from hpo_worker.spec import SpecError, load_spec, parse_spec
from hpo_worker.store import Store

X6 = {"x": {"type": "int", "low": 0, "high": 5}}


def cli(*args, env=None, timeout=30):
    """hpo-worker ARGS -> (exit code, stdout, stderr, seconds)."""
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "hpo_worker", *map(str, args)], env=env or worker_env(Path("/dev/null")),
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr, time.monotonic() - t0


def claims(endpoint, study):
    s = Store([endpoint], password=PASSWORD)
    s.elect(wait=5)
    return {k: json.loads(v) for k, v in s.writer.hgetall(s.claims_key(study)).items()}


def states(trials):
    return collections.Counter(t.state.name for t in trials)


def evaluated_x(evals):
    return collections.Counter(e["params"]["x"] for e in read_evals(evals, "start"))


def finish(p, log, timeout):
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)
        raise AssertionError(f"worker still running after {timeout}s:\n" + log.read_text()[-3000:]) from None


# ---------------------------------------------------------------- 1. a grid step of 1e-9
def test_fine_float_grid_step_refused_fast_before_anything_is_written(servers, tmp_path):
    r = servers("g")
    spec = write_spec(tmp_path / "fine.yaml", name="fine", sampler={"type": "grid"}, budget={},
                      space={"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 1.0e-9}})
    # before: every axis's points were built before the size check (4.8 GB, >120 s)
    code, _, err, took = cli("validate", spec, timeout=20)
    assert code == 2, err
    assert f"{spec}: space.x.step: this axis alone has 1000000001 grid points" in err, err
    assert "Traceback" not in err
    code, _, err, _ = cli("run", spec, "--endpoints", r.endpoint, "--code-dir", HERE, timeout=20)
    assert code == 2 and "space.x.step" in err, err
    assert r.client().dbsize() == 0, "nothing may be written for a refused spec"
    t0 = time.monotonic()
    with pytest.raises(SpecError):
        load_spec(spec)
    assert time.monotonic() - t0 < 1.0
    # two fine axes: each under the limit, their product over it
    both = write_spec(tmp_path / "both.yaml", name="both", sampler={"type": "grid"}, budget={},
                      space={a: {"type": "float", "low": 0.0, "high": 1.0, "step": 1.0e-4} for a in "xy"})
    t0 = time.monotonic()
    with pytest.raises(SpecError, match=r"both.yaml: space: the grid has 100020001 points, more than 10000000"):
        load_spec(both)
    assert time.monotonic() - t0 < 1.0
    print(f"validate of a 1e-9 grid step: exit 2 in {took:.2f}s (whole process)")


# ---------------------------------------------------------------- 2. NaN / inf
def test_nonfinite_value_is_a_fail_never_stored_or_reused(servers, tmp_path):
    r = servers("n")
    spec = write_spec(tmp_path / "s.yaml", name="nan", space=X6, sampler={"type": "random", "seed": 7},
                      budget={"n_trials": 30}, objective="bad_objectives:nonfinite")
    evals, log = tmp_path / "e.jsonl", tmp_path / "w.log"
    t0 = time.monotonic()
    p = start_worker(spec, [r.endpoint], worker_env(evals), log=log)
    assert finish(p, log, 60) == 0, log.read_text()[-3000:]
    took = time.monotonic() - t0
    trials = load_trials(r.endpoint, "nan")
    st = states(trials)
    # the run ends at the budget, or earlier once every point is COMPLETE or given up
    assert st["RUNNING"] == 0, st
    assert st["COMPLETE"] >= 30 or "space exhausted: every one of its 6 points is done (4 COMPLETE, 2 given up)" \
        in log.read_text(), st
    assert all(math.isfinite(t.value) for t in trials if t.state.name == "COMPLETE")
    assert not [t for t in trials if t.state.name == "COMPLETE" and t.params["x"] in (2, 3)]
    # NaN (x=2) and inf (x=3) are evaluated max_attempts (3) times, then given up
    n = evaluated_x(evals)
    assert n[2] == 3 and n[3] == 3, n
    assert all(n[x] == 1 for x in (0, 1, 4, 5)), n
    c = {json.loads(fp)["x"]["i"]: v for fp, v in claims(r.endpoint, "nan").items()}
    assert c["2"]["state"] == c["3"]["state"] == "FAILED" and c["2"]["attempts"] == c["3"]["attempts"] == 3, c
    assert all(math.isfinite(v) for cl in c.values() if cl["state"] == "COMPLETE" for v in cl["values"])
    # later draws of a given-up point FAIL at once, without evaluating; no spinning
    given_up = [t for t in trials if t.state.name == "FAIL" and "point_failed" in t.user_attrs["hpo"]]
    assert given_up and all(t.params["x"] in (2, 3) for t in given_up)
    assert len(trials) < 120, st
    print(f"NaN/inf objective: exit 0 in {took:.2f}s, {st}")


# ---------------------------------------------------------------- 3. a grid point that always fails
def test_failing_grid_points_retried_three_times_then_grid_finishes(servers, tmp_path):
    r = servers("gf")
    spec = write_spec(tmp_path / "s.yaml", name="gridfail", sampler={"type": "grid", "seed": 1}, budget={},
                      space={"x": {"type": "int", "low": 0, "high": 4}},
                      objective="bad_objectives:raises_at_1_nan_at_3")
    evals, log = tmp_path / "e.jsonl", tmp_path / "w.log"
    t0 = time.monotonic()
    p = start_worker(spec, [r.endpoint], worker_env(evals), processes=2, log=log)
    assert finish(p, log, 40) == 0, log.read_text()[-3000:]
    took = time.monotonic() - t0
    n = evaluated_x(evals)
    assert n == {0: 1, 1: 3, 2: 1, 3: 3, 4: 1}, n
    trials = load_trials(r.endpoint, "gridfail")
    st = states(trials)
    assert st["RUNNING"] == 0, st
    # (a second process may draw a point already COMPLETE and reuse its value)
    assert {t.params["x"] for t in trials if t.state.name == "COMPLETE"} == {0, 2, 4}, st
    assert {t.params["x"] for t in trials if "point_failed" in t.user_attrs.get("hpo", {})} == {1, 3}
    assert "grid: every one of its 5 points is done (3 COMPLETE, 2 given up" in log.read_text()
    print(f"grid with two always-failing points: exit 0 in {took:.2f}s, {st}")


def test_every_point_failing_ends_the_run_without_spinning(servers, tmp_path):
    r = servers("af")
    spec = write_spec(tmp_path / "s.yaml", name="allfail", sampler={"type": "random", "seed": 3},
                      space={"x": {"type": "int", "low": 0, "high": 2}}, budget={"n_trials": 10},
                      objective="bad_objectives:always_raises")
    evals, log = tmp_path / "e.jsonl", tmp_path / "w.log"
    p = start_worker(spec, [r.endpoint], worker_env(evals), log=log)
    assert finish(p, log, 30) == 0, log.read_text()[-3000:]
    assert evaluated_x(evals) == {0: 3, 1: 3, 2: 3}
    trials = load_trials(r.endpoint, "allfail")
    assert states(trials)["RUNNING"] == 0 and len(trials) < 40, states(trials)
    assert r.client().llen("hpo:journal:allfail") < 300
    assert "space exhausted: every one of its 3 points is done (0 COMPLETE, 3 given up)" in log.read_text()


@pytest.mark.parametrize("choices, msg", [
    ([1, 1.0], "1.0 is equal, for Optuna, to choices[0] (1)"),
    ([True, 1], "1 is equal, for Optuna, to choices[0] (True)"),
    ([0, False], "False is equal, for Optuna, to choices[0] (0)"),
    (["a", "b", "a"], "'a' is a duplicate of choices[0] ('a')"),
])
def test_colliding_categorical_choices_refused(choices, msg):
    with pytest.raises(SpecError) as e:
        parse_spec({"name": "c", "sampler": "grid", "space": {"c": {"type": "categorical", "choices": choices}},
                    "objective": "m:f"}, "c.yaml")
    assert str(e.value).startswith(f"c.yaml: space.c.choices[{len(choices) - 1}]: {msg}"), str(e.value)


def test_colliding_categorical_choices_refused_by_validate(tmp_path):
    spec = write_spec(tmp_path / "cat.yaml", name="cat", sampler={"type": "grid"}, budget={},
                      space={"c": {"type": "categorical", "choices": [1, 1.0, "1"]}})
    code, _, err, _ = cli("validate", spec)
    assert code == 2 and f"{spec}: space.c.choices[1]: 1.0 is equal, for Optuna, to choices[0] (1)" in err, err
    ok = parse_spec({"name": "ok", "space": {"c": {"type": "categorical", "choices": [1, "1", None, 2.5]}},
                     "objective": "m:f", "budget": {"n_trials": 1}}, "ok.yaml")
    assert ok.space[0].choices == (1, "1", None, 2.5)


# ---------------------------------------------------------------- 4. a string, None, two values
@pytest.mark.parametrize("fn, processes, shown", [
    ("returns_str", 1, "returned 'abc' (str); it must return a float"),
    ("returns_none", 2, "returned None (NoneType); it must return a float"),
    ("returns_pair", 1, "returned [1.0, 2.0]: 2 value(s), but the study has 1 direction(s)"),
])
def test_wrong_return_type_stops_with_exit_2_and_one_message(servers, tmp_path, fn, processes, shown):
    r = servers("rt")
    spec = write_spec(tmp_path / "s.yaml", name="ret", space=X6, budget={"n_trials": 20},
                      objective=f"bad_objectives:{fn}")
    evals, log = tmp_path / "e.jsonl", tmp_path / "w.log"
    t0 = time.monotonic()
    p = start_worker(spec, [r.endpoint], worker_env(evals), processes=processes, log=log)
    assert finish(p, log, 30) == 2, log.read_text()[-3000:]
    took = time.monotonic() - t0
    out = log.read_text()
    assert "Traceback" not in out, out[-3000:]
    lines = [ln for ln in out.splitlines() if f"objective bad_objectives:{fn} {shown}" in ln]
    assert len(lines) == processes and all("stopping (exit 2)" in ln for ln in lines), out[-3000:]
    trials = load_trials(r.endpoint, "ret")
    st = states(trials)
    assert st["RUNNING"] == 0 and st["WAITING"] == 0 and st["COMPLETE"] == 0, st
    assert st["FAIL"] == len(read_evals(evals, "start")) == processes, st
    assert claims(r.endpoint, "ret") == {}
    assert took < 15
    print(f"{fn} with {processes} process(es): exit 2 in {took:.2f}s, {st}")


# ---------------------------------------------------------------- 5. import errors with --processes
@pytest.mark.parametrize("source, shown", [
    ("raise RuntimeError('boom at import')\n", "cannot import module 'badmod': RuntimeError('boom at import')"),
    ("def fn(params:\n    return 1\n", "cannot import module 'badmod': SyntaxError("),
    ("def other(params):\n    return 1.0\n", "'badmod' has no function 'fn'"),
    ("fn = 3\n", "objective: badmod:fn is 3 (int), not a function"),
    ("import sys\nsys.exit(4)\n", "cannot import module 'badmod': SystemExit(4)"),
])
def test_objective_import_errors_with_processes_exit_2_once(servers, tmp_path, source, shown):
    r = servers("imp")
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / "badmod.py").write_text(source)
    spec = write_spec(tmp_path / "s.yaml", name="imp", objective="badmod:fn")
    code, out, err, took = cli("run", spec, "--processes", "3", "--endpoints", r.endpoint, "--code-dir", code_dir)
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"hpo-worker: error: {spec}: objective: "), err
    assert shown in errors[0], errors[0]
    assert r.client().dbsize() == 0, "nothing may be written when the objective cannot be imported"
    assert took < 20


# ---------------------------------------------------------------- 6. names and seeds
@pytest.mark.parametrize("changes, field", [
    ({"name": "abc\n"}, "name"),
    ({"objective": "objectives:record\n"}, "objective"),
    ({"sampler": {"type": "random", "seed": -1}}, "sampler.seed"),
    ({"sampler": {"type": "tpe", "seed": 2**32}}, "sampler.seed"),
    ({"sampler": {"type": "grid", "seed": 99999999999999}}, "sampler.seed"),
])
def test_trailing_newline_names_and_out_of_range_seeds_refused(changes, field):
    d = {"name": "ok", "space": X6, "budget": {"n_trials": 1}, "objective": "objectives:record", **changes}
    with pytest.raises(SpecError) as e:
        parse_spec(d, "n.yaml")
    assert str(e.value).startswith(f"n.yaml: {field}: "), str(e.value)
    assert parse_spec({**d, "sampler": {"type": "random", "seed": 2**32 - 1}, "name": "ok", "objective": "a:b"},
                      "n.yaml").sampler["seed"] == 2**32 - 1


def test_trailing_newline_name_and_negative_seed_refused_by_the_cli(servers, tmp_path):
    r = servers("nm")
    spec = write_spec(tmp_path / "nl.yaml", name="abc\n")
    code, _, err, _ = cli("run", spec, "--endpoints", r.endpoint, "--code-dir", HERE)
    assert code == 2 and f"{spec}: name: " in err, err
    seed = write_spec(tmp_path / "seed.yaml", name="seed", sampler={"type": "random", "seed": -1})
    code, _, err, _ = cli("validate", seed)
    assert code == 2 and f"{seed}: sampler.seed: must be between 0 and 4294967295" in err, err
    code, _, err, _ = cli("run", seed, "--endpoints", r.endpoint, "--code-dir", HERE)
    assert code == 2 and "sampler.seed" in err, err
    assert r.client().dbsize() == 0


# ---------------------------------------------------------------- 8. no trial RUNNING for good
def test_budget_reached_worker_reaps_a_dead_workers_trial_before_exiting(servers, tmp_path):
    r = servers("b")
    spec = write_spec(tmp_path / "s.yaml", name="reap", budget={"n_trials": 3})
    e_dead, e_late = tmp_path / "dead.jsonl", tmp_path / "late.jsonl"
    dead = start_worker(spec, [r.endpoint], worker_env(e_dead, sleep=60), host="dead", log=tmp_path / "d.log")
    wait_for(lambda: read_evals(e_dead, "start"), what="the doomed trial in flight")
    dead.kill()
    dead.wait(10)
    # the budget is reached by the late worker within its first heartbeat_ttl, when reaping
    # is still paused: before, it exited "budget reached" and the trial stayed RUNNING
    log = tmp_path / "l.log"
    t0 = time.monotonic()
    late = start_worker(spec, [r.endpoint], worker_env(e_late), host="late", log=log)
    assert finish(late, log, 30) == 0, log.read_text()[-3000:]
    took = time.monotonic() - t0
    trials = load_trials(r.endpoint, "reap")
    st = states(trials)
    assert st["RUNNING"] == 0 and st["COMPLETE"] >= 3, st
    killed = [t for t in trials if t.user_attrs.get("hpo", {}).get("host") == "dead"]
    assert [t.state.name for t in killed] == ["FAIL"]
    assert "reaped trial 0 of dead" in log.read_text()
    # bounded: TTL 1.5 s + interval 0.3 s, plus process start on a loaded machine
    assert took < 15
    print(f"late worker reaped the dead trial and exited in {took:.2f}s: {st}")


def test_sigterm_while_store_down_then_a_later_worker_leaves_nothing_running(servers, tmp_path):
    r = servers("d", persist=True)
    spec = write_spec(tmp_path / "s.yaml", name="down", budget={"n_trials": 5})
    evals, log = tmp_path / "e.jsonl", tmp_path / "w.log"
    p = start_worker(spec, [r.endpoint], worker_env(evals, sleep=60), processes=2, log=log)
    wait_for(lambda: len(read_evals(evals, "start")) == 2, what="2 trials in flight")
    r.kill()
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    assert finish(p, log, 30) == 0
    r.start()  # the store comes back with its data (AOF)
    left = states(load_trials(r.endpoint, "down"))["RUNNING"]
    log2 = tmp_path / "w2.log"
    late = start_worker(spec, [r.endpoint], worker_env(tmp_path / "e2.jsonl"), host="late", log=log2)
    assert finish(late, log2, 30) == 0, log2.read_text()[-3000:]
    trials = load_trials(r.endpoint, "down")
    st = states(trials)
    assert st["RUNNING"] == 0 and st["COMPLETE"] >= 5, st
    print(f"RUNNING after SIGTERM with the store down: {left}; after a later worker: {st}")
