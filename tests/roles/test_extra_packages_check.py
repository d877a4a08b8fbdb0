"""The optuna_worker role's check that lets a warm run skip pip for the
objectives' extra packages (roles/optuna_worker/vars/main.yml,
_optuna_worker_pins_installed): run here with this venv's real packages."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = yaml.safe_load((ROOT / "roles/optuna_worker/vars/main.yml").read_text())["_optuna_worker_pins_installed"]


def installed_as_pinned(*specs: str) -> bool:
    done = subprocess.run([sys.executable, "-c", SCRIPT, *specs], capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0


def test_every_package_installed_at_its_pin_skips_pip():
    pyyaml, pytest_version = importlib.metadata.version("PyYAML"), importlib.metadata.version("pytest")
    assert installed_as_pinned(f"PyYAML=={pyyaml}", f"pytest=={pytest_version}")


def test_anything_else_runs_pip():
    pyyaml = importlib.metadata.version("PyYAML")
    assert not installed_as_pinned("PyYAML==0.0.1")  # another version
    assert not installed_as_pinned("PyYAML")  # not pinned with ==
    assert not installed_as_pinned(f"PyYAML>={pyyaml}")
    assert not installed_as_pinned(f"PyYAML=={pyyaml}", "no-such-package-hpo==1.0")  # one missing
