"""Optuna's own storage tests, run against JournalStorage(FencedJournalBackend) on a real redis-server.

Optuna's code is not part of this repository: give the path of an Optuna source
checkout (its tests/storages_tests/ is used) matching the installed Optuna:

    git clone --depth 1 --branch vX.Y.Z https://github.com/optuna/optuna /tmp/optuna-src
    python tests/optuna_suite.py /tmp/optuna-src [pytest args, e.g. -x -k pickle]

What runs (each test on a flushed redis-server started here, the storage built
by ``storage()`` below instead of Optuna's own fixtures):

- every test of ``TestStorage`` (tests/storages_tests/test_storages.py, itself
  ``optuna.testing.pytest_storages.StorageTestCase`` plus its overrides);
- from tests/storages_tests/journal_tests/test_journal.py, the backend tests
  that take any backend: concurrent ``append_logs`` from 10 threads and from a
  10-process pool (entries without ``worker_id``; the backend is pickled), and
  ``pop_waiting_trial`` from a 10-process pool with the storage handed to it.

Exit status is pytest's. Not collected by the worker's own test run (no test_ prefix).
"""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent

MODULE = '''
import os
import sys
import types

import pytest

sys.modules.setdefault("fakeredis", types.SimpleNamespace(FakeStrictRedis=None))  # only Optuna's own redis mode uses it

import optuna
import test_journal as upstream_journal
import test_storages as upstream
from optuna.storages import JournalStorage

from hpo_worker.store import FencedJournalBackend, Store

ENDPOINT = os.environ["HPO_SUITE_ENDPOINT"]
PASSWORD = os.environ["HPO_SUITE_PASSWORD"]


def fenced_backend():
    store = Store([ENDPOINT], password=PASSWORD)
    store.elect(wait=5)
    return FencedJournalBackend(store, 0, "optuna-suite")


@pytest.fixture
def storage():
    store = Store([ENDPOINT], password=PASSWORD)
    store.client(ENDPOINT).flushall()
    yield JournalStorage(fenced_backend())


class TestFencedJournalStorage(upstream.TestStorage):
    pass


class FencedSupplier:
    def __init__(self, storage_type, grace_period):
        pass

    def __enter__(self):
        Store([ENDPOINT], password=PASSWORD).client(ENDPOINT).flushall()
        return fenced_backend()

    def __exit__(self, *exc):
        return None


@pytest.mark.parametrize("name", ["test_concurrent_append_logs_for_multi_threads",
                                  "test_concurrent_append_logs_for_multi_processes"])
def test_journal_backend(name, monkeypatch):
    monkeypatch.setattr(upstream_journal, "JournalLogStorageSupplier", FencedSupplier)
    getattr(upstream_journal, name)("fenced", None)


def _pop_waiting_trial(storage, study_name):
    return optuna.load_study(storage=storage, study_name=study_name)._pop_waiting_trial_id()


def test_pop_waiting_trial_multiprocess_safe(storage):
    """test_journal.py's test of the same name, with this storage handed to the process pool."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    study = optuna.create_study(storage=storage)
    for i in range(10):
        study.enqueue_trial({"i": i})
    with ProcessPoolExecutor(10) as pool:
        futures = [pool.submit(_pop_waiting_trial, storage, study.study_name) for _ in range(10)]
        ids = {f.result() for f in as_completed(futures)} - {None}
    assert len(ids) == 10
'''


def main() -> int:
    if len(sys.argv) < 2 or not (Path(sys.argv[1]) / "tests" / "storages_tests").is_dir():
        print(__doc__, file=sys.stderr)
        return 2
    src = Path(sys.argv[1]).resolve() / "tests" / "storages_tests"
    sys.path.insert(0, str(HERE))
    import pytest
    from conftest import PASSWORD, RedisProc

    tmp = Path(tempfile.mkdtemp(prefix="hpo-optuna-suite-"))
    r = RedisProc(tmp, "redis").start()
    try:
        os.environ.update(HPO_SUITE_ENDPOINT=r.endpoint, HPO_SUITE_PASSWORD=PASSWORD)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(src), str(src / "journal_tests"),
                                                    os.environ.get("PYTHONPATH", "")])
        sys.path[:0] = [str(src), str(src / "journal_tests")]
        sys.modules.setdefault("fakeredis", types.SimpleNamespace(FakeStrictRedis=None))
        test = tmp / "test_fenced_optuna_suite.py"
        test.write_text(textwrap.dedent(MODULE))
        return int(pytest.main([str(test), "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp), *sys.argv[2:]]))
    finally:
        r.stop()


if __name__ == "__main__":
    sys.exit(main())
