"""The full KeyDB verification with real KeyDB packages.

KeyDB's repository cannot be reached from the machines this project is
developed and tested on, and Debian has no KeyDB package. When
HPO_KEYDB_DEBS names a directory of KeyDB .deb files (keydb-tools,
keydb-server for bookworm), this runs `molecule test -s keydb-packages`:
a signed local apt repository built from them, served on the test bed
bridge, and the same verifier as molecule/keydb with engine keydb
(multi-master links, writes on every node read on every other, a node
added without losing keys, password, binding). Without the variable it is
reported as skipped, with that reason. Without HPO_KEYDB_DEBS it uses
../shared/keydb-debs beside the repository, or /work/shared/keydb-debs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from keydb_testlib import REPO

pytestmark = pytest.mark.testbed

# Where the packages are looked for when HPO_KEYDB_DEBS is not set (bin/test
# exports it from the same list).
DEFAULT_DIRS = list(dict.fromkeys([REPO.parent / "shared" / "keydb-debs", Path("/work/shared/keydb-debs")]))

SKIP_REASON = (
    "no KeyDB packages: HPO_KEYDB_DEBS is not set and neither "
    + " nor ".join(str(d) for d in DEFAULT_DIRS)
    + " holds keydb-server_*.deb. KeyDB packages cannot be downloaded here (only Debian's own "
    "registry is reachable). Set HPO_KEYDB_DEBS to a directory of KeyDB .deb files (keydb-tools, "
    "keydb-server for bookworm) to run molecule/keydb-packages."
)


def packages_dir() -> str:
    if os.environ.get("HPO_KEYDB_DEBS"):
        return os.environ["HPO_KEYDB_DEBS"]
    for d in DEFAULT_DIRS:
        if any(d.glob("keydb-server_*.deb")):
            return str(d.resolve())
    return ""


def molecule_test(scenario: str, timeout: float) -> None:
    """`molecule test -s SCENARIO` with the KeyDB packages (skipped, with the reason,
    without them). Molecule's output is not captured: with `pytest -s` (bin/test)
    it is in the stage's log as it runs."""
    debs = packages_dir()
    if not debs:
        pytest.skip(SKIP_REASON.replace("molecule/keydb-packages", f"molecule/{scenario}"))
    # A variable that is set but wrong is a mistake to report, not a skip.
    found = sorted(p.name for p in Path(debs).glob("*.deb"))
    assert any(n.startswith("keydb-server_") for n in found), f"HPO_KEYDB_DEBS={debs}: no keydb-server_*.deb"
    assert any(n.startswith("keydb-tools_") for n in found), f"HPO_KEYDB_DEBS={debs}: no keydb-tools_*.deb"
    molecule = Path(sys.executable).with_name("molecule")
    env = dict(os.environ, HPO_KEYDB_DEBS=debs, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    proc = subprocess.run([str(molecule), "test", "-s", scenario], cwd=REPO, env=env, timeout=timeout, check=False)
    assert proc.returncode == 0, f"molecule test -s {scenario} exited {proc.returncode} (its output is above)"


def test_keydb_packages_scenario() -> None:
    molecule_test("keydb-packages", timeout=1800)
