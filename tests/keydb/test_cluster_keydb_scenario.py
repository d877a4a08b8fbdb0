"""The whole cluster on real KeyDB (molecule/cluster-keydb), when the packages are here.

site.yml with keydb_engine keydb from a local signed repository of KeyDB's
own packages, then a study on three nodes through a SIGKILL of the writer
master and a power cut of the next writer's node (see the scenario's
verifier). Skipped, with the reason, when no KeyDB packages are found (same
places as test_keydb_packages_scenario.py).
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


def test_cluster_keydb_scenario() -> None:
    debs = packages_dir()
    if not debs:
        pytest.skip(SKIP_REASON.replace("molecule/keydb-packages", "molecule/cluster-keydb"))
    molecule = Path(sys.executable).with_name("molecule")
    env = dict(os.environ, HPO_KEYDB_DEBS=debs, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    proc = subprocess.run([str(molecule), "test", "-s", "cluster-keydb"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=2400, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-8000:]
    figures = REPO / ".cache" / "cluster-keydb-figures.json"
    print(figures.read_text() if figures.exists() else "no figures written")
