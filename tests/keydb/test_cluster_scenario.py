"""The whole product on real KeyDB (molecule/cluster), when the packages are here.

site.yml with keydb_engine keydb from a local signed repository of KeyDB's
own packages, then the scenario's verifier: the studies, the fast re-runs,
Ray Tune, the browser and security checks, a study through a SIGKILL of the
writer master and a power cut of the next writer's node, a token rotation
and the removal of a KeyDB master (molecule/cluster/tests). Skipped, with
the reason, when no KeyDB packages are found (same places as
test_keydb_packages_scenario.py, whose molecule_test runs it).
"""

from __future__ import annotations

import pytest
from keydb_testlib import REPO
from test_keydb_packages_scenario import molecule_test

pytestmark = pytest.mark.testbed


def test_cluster_scenario() -> None:
    # A bound for a hung scenario, not a target (it took 20-25 min on this 2-core machine).
    molecule_test("cluster", timeout=3000)
    for name in ("cluster-figures.json", "cluster-chaos-figures.json"):
        figures = REPO / ".cache" / name
        print(name, figures.read_text() if figures.exists() else "not written")
