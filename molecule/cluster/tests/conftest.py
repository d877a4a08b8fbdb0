"""The cluster scenario's test files run in this order, whatever their names:
the re-runs of site.yml first (test_rerun.py: its first run is the scenario's
idempotence check, so it must follow the converge; they leave every node as
they found it), then the study's own tests, then the Ray Tune experiments (test_tune.py: they
need all three nodes), then the security checks (they read the inventory's
Ray token and leave the cluster as it was), then the study on real KeyDB
through a writer's SIGKILL and a node's power cut (test_keydb_chaos.py: every
node is back afterwards), then the tests that change the cluster for good
(token rotation, then the removal of a node). A file not
listed here runs first."""

from __future__ import annotations

ORDER = ["test_rerun.py", "test_cluster.py", "test_tune.py", "test_security.py", "test_keydb_chaos.py",
         "test_lifecycle.py"]


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return ORDER.index(name) if name in ORDER else 0

    items.sort(key=rank)  # stable: each file keeps its own order
