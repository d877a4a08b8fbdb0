"""`hpo-worker trials --json`: the journal's trials, as Optuna replays them, read-only."""

import json
import subprocess
import sys
from datetime import datetime

from conftest import PASSWORD, load_trials, start_worker, worker_env, write_spec
from hpo_worker.journal import Replay
from hpo_worker.store import Store, iter_journal


def _trials(endpoint, *extra, env):
    p = subprocess.run([sys.executable, "-m", "hpo_worker", "trials", "--json", *extra, "--endpoints", endpoint],
                       env=env, capture_output=True, text=True, timeout=60)
    return p, [json.loads(line) for line in p.stdout.splitlines()]


def _local(iso):
    """The journal's UTC ISO time as Optuna shows it (local, naive)."""
    return datetime.fromisoformat(iso).astimezone().replace(tzinfo=None) if iso else None


def test_trials_json_matches_optuna_replay(servers, tmp_path):
    r = servers("tr")
    space = {"x": {"type": "int", "low": 0, "high": 3},
             "f": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.5},
             "c": {"type": "categorical", "choices": ["a", "b"]}}
    env = worker_env(tmp_path / "e.jsonl")
    # beta: NaN at x == 2, inf at x == 3: FAIL trials, requeued (WAITING) then given up
    for name, n, objective in (("beta", 30, "bad_objectives:nonfinite"), ("alpha", 5, "objectives:record")):
        spec = write_spec(tmp_path / f"{name}.yaml", name=name, space=space, budget={"n_trials": n},
                          objective=objective)
        p = start_worker(spec, [r.endpoint], env, processes=2, log=tmp_path / "w.log")
        assert p.wait(120) == 0, (tmp_path / "w.log").read_text()[-3000:]

    # a WAITING trial (what a requeue leaves): its params are the fixed ones
    import optuna
    from hpo_worker.backend import FencedJournalBackend
    from optuna.storages import JournalStorage

    store = Store([r.endpoint], password=PASSWORD)
    store.elect(wait=5)
    study = optuna.load_study(study_name="beta", storage=JournalStorage(FencedJournalBackend(store, 0, "beta")))
    study.enqueue_trial({"x": 3, "f": 0.5, "c": "b"})
    r.client().delete("hpo:writer")  # trials is read-only: it must not write a record back

    proc, got = _trials(r.endpoint, "--study", "beta", env=env)
    assert proc.returncode == 0, proc.stderr
    assert r.client().get("hpo:writer") is None, "trials wrote nothing"
    r.client().set("hpo:writer", f"1 {r.endpoint}")
    ref = load_trials(r.endpoint, "beta")
    assert [t["number"] for t in got] == [t.number for t in ref]
    states = set()
    for mine, t in zip(got, ref):
        states.add(t.state.name)
        assert mine["study"] == "beta"
        assert mine["state"] == t.state.name
        want_params = t.params if t.state.name != "WAITING" else t.system_attrs["fixed_params"]
        assert mine["params"] == want_params, (mine, t)
        assert mine["values"] == t.values
        assert mine["hpo"] == t.user_attrs.get("hpo")
        assert mine["requeued_from"] == t.user_attrs.get("hpo_requeued_from")
        assert mine["requeue_reason"] == t.user_attrs.get("hpo_reason")
        assert _local(mine["datetime_start"]) == t.datetime_start
        assert _local(mine["datetime_complete"]) == t.datetime_complete
    assert {"COMPLETE", "WAITING", "FAIL"} <= states, states
    assert any(t["requeued_from"] is not None and t["requeue_reason"] for t in got)
    assert any("reused_from" in (t["hpo"] or {}) for t in got)

    # every study, sorted by name
    proc, every = _trials(r.endpoint, env=env)
    assert proc.returncode == 0, proc.stderr
    n_alpha = sum(1 for t in every if t["study"] == "alpha")
    assert n_alpha >= 5 and [t["study"] for t in every] == ["alpha"] * n_alpha + ["beta"] * len(got)
    # an unknown study: exit 2
    proc, _ = _trials(r.endpoint, "--study", "nope", env=env)
    assert proc.returncode == 2 and "no study named 'nope'" in proc.stderr

    # the fast scan of raw entries gives what decoding every entry gives
    raws = list(iter_journal(r.client(), "hpo:journal:beta"))
    fast, slow = Replay(params=True).feed(raws), Replay(params=True)
    for raw in raws:
        slow.apply(json.loads(raw))
    fields = ("trial_id", "number", "study", "state", "start", "complete", "hpo", "values", "params",
              "requeued_from", "requeue_reason")
    rows = [[[getattr(t, f) for f in fields] for t in replay.trials] for replay in (fast, slow)]
    assert rows[0] == rows[1]
    assert fast.owner == slow.owner
