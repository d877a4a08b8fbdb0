"""The read-only Optuna storage (hpo_worker.readonly_storage) on real redis-servers and real workers:
every write method of optuna's BaseStorage refused (enumerated from the class), every read the
same as the workers' view (Optuna's replay through the workers' backend, `hpo-worker trials
--json`), new trials and a shrunk journal followed, a failover followed."""

import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import PASSWORD, load_trials, start_worker, wait_for, worker_env, write_spec
from hpo_worker.readonly_storage import (
    READ_METHODS,
    ReadOnlyStorage,
    ReadOnlyStorageError,
    read_only_storage,
    write_methods,
)
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

SPACE = {"x": {"type": "int", "low": 0, "high": 99}, "y": {"type": "float", "low": 0.0, "high": 1.0}}


def run_study(tmp_path, eps, name, host, n, processes=2, sleep=0.0):
    spec = write_spec(tmp_path / f"{name}-{host}.yaml", name=name, space=SPACE, budget={"n_trials": n})
    p = start_worker(spec, eps, worker_env(tmp_path / f"{name}.jsonl", sleep=sleep), host=host,
                     processes=processes, log=tmp_path / "w.log")
    assert p.wait(180) == 0, (tmp_path / "w.log").read_text()[-3000:]


def store_state(client):
    """Every key of the store with its value: what a write would change."""
    out = {}
    for k in sorted(client.keys("*")):
        t = client.type(k)
        out[k] = (t, client.lrange(k, 0, -1) if t == "list" else client.hgetall(k) if t == "hash"
                  else sorted(client.smembers(k)) if t == "set" else client.get(k) if t == "string"
                  else client.dump(k))
    return out


def same_trial(a, b):
    """Everything a consumer sees of a trial, the trial id aside (the storage numbers them across studies)."""
    fields = ("number", "state", "values", "params", "distributions", "user_attrs", "system_attrs",
              "intermediate_values", "datetime_start", "datetime_complete")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def cli_trials(eps, study):
    p = subprocess.run([sys.executable, "-m", "hpo_worker", "trials", "--json", "--study", study, "--endpoints",
                        ",".join(eps)], env=worker_env(Path("/dev/null")),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


def complete(trials):
    return sum(t.state == TrialState.COMPLETE for t in trials)


# ------------------------------------------------------------------ writes
def base_storage_methods():
    """Public methods of optuna's BaseStorage, found here independently of the module's own list."""
    return sorted(n for n, _ in inspect.getmembers(BaseStorage, inspect.isfunction) if not n.startswith("_"))


def test_every_write_method_of_base_storage_is_refused_and_nothing_is_written(servers, tmp_path):
    r = servers("w")
    eps = [r.endpoint]
    run_study(tmp_path, eps, "ro", "h1", 12)
    before = store_state(r.client())
    storage = read_only_storage(eps, password=PASSWORD)
    sid = storage.get_study_id_from_name("ro")
    tid = storage.get_all_trials(sid)[0]._trial_id

    methods = base_storage_methods()
    assert set(READ_METHODS) <= set(methods), "a read named in READ_METHODS is not a BaseStorage method"
    refused = [n for n in methods if n not in READ_METHODS]
    assert refused == write_methods()
    # every method that creates, sets or deletes is among the refused (none hides among the reads)
    assert all(n in refused for n in methods if n.startswith(("create_", "set_", "delete_")))
    assert len(refused) >= 10  # optuna 5.0.0 has 10 write methods
    values = {"study_id": sid, "trial_id": tid, "key": "note", "value": "edited", "study_name": "new",
              "directions": [StudyDirection.MINIMIZE], "template_trial": None, "param_name": "x",
              "param_value_internal": 1.0, "distribution": optuna.distributions.IntDistribution(0, 99),
              "state": TrialState.COMPLETE, "values": [0.0], "step": 1, "intermediate_value": 0.5}
    for name in refused:
        sig = inspect.signature(getattr(BaseStorage, name))
        kwargs = {p: values.get(p) for p in list(sig.parameters)[1:]}
        with pytest.raises(ReadOnlyStorageError) as exc:
            getattr(storage, name)(**kwargs)
        msg = str(exc.value)
        assert msg.startswith(f"{name}: refused") and "read-only" in msg and "fenced writer" in msg, msg

    # and through Optuna's own API, as optuna-dashboard or a user would
    study = optuna.load_study(study_name="ro", storage=storage)
    for write in (lambda: study.set_user_attr("note", "x"), lambda: study.ask(),
                  lambda: study.enqueue_trial({"x": 1, "y": 0.5}),
                  lambda: study.optimize(lambda t: 0.0, n_trials=1),
                  lambda: optuna.delete_study(study_name="ro", storage=storage),
                  lambda: optuna.create_study(study_name="other", storage=storage),
                  lambda: optuna.copy_study(from_study_name="ro", from_storage=storage, to_storage=storage,
                                            to_study_name="copy")):
        with pytest.raises(ReadOnlyStorageError):
            write()
    # the replay's backend refuses to append too (a second line of defence)
    with pytest.raises(ReadOnlyStorageError):
        storage._journal(sid).storage._backend.append_logs([{"op_code": 1, "study_id": 0}])
    assert store_state(r.client()) == before, "the read-only storage changed the store"


# ------------------------------------------------------------------ reads
def test_reads_are_the_workers_view_follow_new_trials_and_a_shrunk_journal(servers, tmp_path):
    r = servers("r")
    eps = [r.endpoint]
    run_study(tmp_path, eps, "ra", "h1", 25)
    run_study(tmp_path, eps, "rb", "h2", 15)
    storage = read_only_storage(eps, password=PASSWORD, recheck=0.0)
    calls = {}

    def call(name, *args, **kwargs):
        calls[name] = True
        return getattr(storage, name)(*args, **kwargs)

    studies = call("get_all_studies")
    assert [s.study_name for s in studies] == ["ra", "rb"]
    assert [s._study_id for s in studies] == [0, 1]
    for fs in studies:
        name, sid = fs.study_name, fs._study_id
        assert call("get_study_id_from_name", name) == sid
        assert call("get_study_name_from_id", sid) == name
        assert call("get_study_directions", sid) == [StudyDirection.MINIMIZE] == fs.directions
        assert call("get_study_user_attrs", sid) == fs.user_attrs
        assert call("get_study_system_attrs", sid) == fs.system_attrs
        workers = load_trials(r.endpoint, name)            # Optuna's replay through the workers' backend
        mine = call("get_all_trials", sid)
        assert len(mine) == len(workers)
        assert complete(mine) >= {"ra": 25, "rb": 15}[name]
        assert all(same_trial(a, b) for a, b in zip(mine, workers))
        assert len(call("get_all_trials", sid, deepcopy=False, states=(TrialState.COMPLETE,))) == \
            sum(t.state == TrialState.COMPLETE for t in workers)
        assert call("get_n_trials", sid) == len(workers)
        # the same trials, states, values and params as `hpo-worker trials --json`
        cli = cli_trials(eps, name)
        assert [(t.number, t.state.name, t.params, t.values, t.user_attrs.get("hpo")) for t in mine] == \
            [(c["number"], c["state"], c["params"], c["values"], c["hpo"]) for c in cli]
        best = call("get_best_trial", sid)
        assert best.value == min(t.value for t in workers if t.state == TrialState.COMPLETE)
        for t in mine:
            assert call("get_trial_id_from_study_id_trial_number", sid, t.number) == t._trial_id
            assert call("get_trial_number_from_id", t._trial_id) == t.number
            assert same_trial(call("get_trial", t._trial_id), t)
            assert call("get_trial_params", t._trial_id) == t.params
            assert call("get_trial_user_attrs", t._trial_id) == t.user_attrs
            assert call("get_trial_system_attrs", t._trial_id) == t.system_attrs
            assert call("get_trial_param", t._trial_id, "x") == t.distributions["x"].to_internal_repr(t.params["x"])
        with pytest.raises(UpdateFinishedTrialError):
            call("check_trial_is_updatable", mine[0]._trial_id, TrialState.COMPLETE)
    call("remove_session")
    assert set(calls) == set(READ_METHODS), "every read method is exercised here"
    # ids of the second study do not collide with the first's
    assert {t._trial_id for t in storage.get_all_trials(0)}.isdisjoint({t._trial_id for t in storage.get_all_trials(1)})
    with pytest.raises(KeyError):
        storage.get_study_id_from_name("nope")
    # deep copies by default (a consumer may modify them); copy_trials=False hands out the replay's own
    a, b = storage.get_all_trials(0)[0], storage.get_all_trials(0)[0]
    assert a is not b and a.params is not b.params and same_trial(a, b)
    shared = read_only_storage(eps, password=PASSWORD, copy_trials=False)
    assert shared.get_all_trials(0)[0] is shared.get_all_trials(0)[0]
    assert all(same_trial(x, y) for x, y in zip(shared.get_all_trials(1), storage.get_all_trials(1)))

    # the same object follows new trials
    run_study(tmp_path, eps, "ra", "h3", 40)
    assert all(same_trial(a, b) for a, b in zip(storage.get_all_trials(0), load_trials(r.endpoint, "ra")))
    assert complete(storage.get_all_trials(0)) >= 40
    # a journal that shrank under the same writer (a resync) is replayed again, not read past its end
    r.client().rpop("hpo:journal:ra", 7)
    mine, workers = storage.get_all_trials(0), load_trials(r.endpoint, "ra")
    assert len(mine) == len(workers) and all(same_trial(a, b) for a, b in zip(mine, workers))
    study = optuna.load_study(study_name="rb", storage=storage)
    assert study.best_value == min(t.value for t in load_trials(r.endpoint, "rb") if t.value is not None)


def test_reads_follow_a_failover_and_ignore_the_old_writer_when_it_returns(servers, tmp_path):
    a = servers("fa", persist=True)
    b = servers("fb", replicaof=a)
    eps = [a.endpoint, b.endpoint]
    run_study(tmp_path, eps, "fo", "h1", 20, processes=1)
    storage = read_only_storage(eps, password=PASSWORD, recheck=0.2, elect_wait=10)
    assert isinstance(storage, ReadOnlyStorage)
    assert storage.source.endswith(a.endpoint)
    first = storage.get_all_trials(0)
    assert complete(first) >= 20 and all(same_trial(x, y) for x, y in zip(first, load_trials(a.endpoint, "fo")))
    wait_for(lambda: b.client().llen("hpo:journal:fo") == a.client().llen("hpo:journal:fo"), 10, "the replica")

    a.kill()
    run_study(tmp_path, eps, "fo", "h2", 35, processes=1)  # the worker promotes b and goes on there
    record = b.client().get("hpo:writer")
    assert record.endswith(b.endpoint)
    mine = storage.get_all_trials(0)
    assert storage.source == f"{record} {b.endpoint}"
    workers = load_trials(b.endpoint, "fo")
    assert len(mine) == len(workers) and complete(mine) >= 35 and all(same_trial(x, y) for x, y in zip(mine, workers))
    assert {t.user_attrs["hpo"]["host"] for t in mine if t.state == TrialState.COMPLETE} == {"h1", "h2"}

    # the old writer comes back as a master with its old journal: reads stay on the writer
    a.start(replicaof=None)
    assert a.client().llen("hpo:journal:fo") < b.client().llen("hpo:journal:fo")
    time.sleep(0.3)  # past recheck: the next read looks at both masters again
    mine = storage.get_all_trials(0)
    assert storage.source == f"{record} {b.endpoint}"
    assert len(mine) == len(workers) and all(same_trial(x, y) for x, y in zip(mine, workers))
    study = optuna.load_study(study_name="fo", storage=storage)
    assert study.best_trial.number == min((t for t in workers if t.state == TrialState.COMPLETE),
                                          key=lambda t: (t.value, t.number)).number
