"""The whole product on real KeyDB (molecule/cluster), when the packages are here.

site.yml with keydb_engine keydb from a local signed repository of KeyDB's
own packages, then the scenario's verifier: the studies, the fast re-runs,
Ray Tune, the browser and security checks, a study through a SIGKILL of the
writer master and a power cut of the next writer's node, a token rotation
and the removal of a KeyDB master (molecule/cluster/tests). Skipped, with
the reason, when no KeyDB packages are found (same places as
test_keydb_packages_scenario.py). Molecule's output is not captured: with
`pytest -s` (bin/test) it is in the stage's log as it runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from keydb_testlib import REPO
from test_keydb_packages_scenario import SKIP_REASON, packages_dir

pytestmark = pytest.mark.testbed


def test_cluster_scenario() -> None:
    debs = packages_dir()
    if not debs:
        pytest.skip(SKIP_REASON.replace("molecule/keydb-packages", "molecule/cluster"))
    molecule = Path(sys.executable).with_name("molecule")
    env = dict(os.environ, HPO_KEYDB_DEBS=debs, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    # A bound for a hung scenario, not a target (it took 20-25 min on this 2-core machine).
    proc = subprocess.run([str(molecule), "test", "-s", "cluster"], cwd=REPO, env=env, timeout=3000, check=False)
    assert proc.returncode == 0, f"molecule test -s cluster exited {proc.returncode} (its output is above)"
    for name in ("cluster-figures.json", "cluster-chaos-figures.json"):
        figures = REPO / ".cache" / name
        print(name, figures.read_text() if figures.exists() else "not written")
