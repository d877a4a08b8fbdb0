"""JournalStorage(FencedJournalBackend) used as a plain Optuna storage (issue 10 case 9):
pickled to a process pool, shared by threads, entries without a worker id."""

import pickle
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import optuna
from conftest import PASSWORD
from hpo_worker.backend import FencedJournalBackend
from hpo_worker.store import Store
from optuna.storages import JournalStorage


def _storage(endpoint):
    store = Store([endpoint], password=PASSWORD)
    store.elect(wait=5)
    return JournalStorage(FencedJournalBackend(store, 0, "api"))


def _optimize(storage, name, n):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=n)
    return len(study.trials)


def test_storage_goes_to_a_process_pool_and_threads(servers):
    r = servers("api")
    storage = _storage(r.endpoint)
    study = optuna.create_study(study_name="api", storage=storage)
    copy = pickle.loads(pickle.dumps(storage))  # no lock or connection is pickled; the copy reconnects
    assert copy.get_study_id_from_name("api") == study._study_id
    with ProcessPoolExecutor(3) as pool:
        assert all(n >= 4 for n in pool.map(_optimize, [storage] * 3, ["api"] * 3, [4] * 3))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=6, n_jobs=3)
    states = [t.state.name for t in study.get_trials()]
    assert states.count("COMPLETE") == 18 and len(states) == 18, states


def test_append_logs_without_worker_id_from_threads(servers):
    r = servers("raw")
    backend = _storage(r.endpoint)._backend
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(backend.append_logs, [[{"key": i}] for i in range(200)]))
    got = list(backend.read_logs(0))
    assert sorted(e["key"] for e in got) == list(range(200))
    assert not r.client().keys("hpo:hb:*"), "no heartbeat key for entries without a worker id"
