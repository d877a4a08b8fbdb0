"""roles/ray/files/ray_pip_check.py, the check that lets a warm run skip pip for the Tune
packages in the Ray virtualenv (roles/ray/tasks/install.yml): run here with this venv's
real packages (bin/setup installs worker/[tune], so ray[tune] is there)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "roles" / "ray" / "files" / "ray_pip_check.py"


def check(*specs: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, str(SCRIPT), *specs], capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, done.stdout.strip()


def test_installed_requirements_and_their_extras_skip_pip():
    ray = importlib.metadata.version("ray")
    pyyaml = importlib.metadata.version("PyYAML")
    assert check(f"ray[tune]=={ray}", f"PyYAML=={pyyaml}", "optuna>=1") == (0, "")


def test_a_missing_extra_requirement_runs_pip():
    # ray's "llm" extra is not installed here (vllm and friends)
    rc, why = check(f"ray[llm]=={importlib.metadata.version('ray')}")
    assert rc == 1 and why.startswith("ray[llm] needs "), why


def test_another_version_or_a_missing_package_runs_pip():
    assert check("PyYAML==0.1") == (1, f"PyYAML: {importlib.metadata.version('PyYAML')} installed, ==0.1 wanted")
    assert check("no-such-package-hpo==1.0") == (1, "no-such-package-hpo: not installed")


def test_tune_packages_follow_the_worker_pins():
    """ray_tune_pip_packages repeats hpo_worker's dependency pins (worker/pyproject.toml):
    the job ships hpo_worker, the node's Ray venv must hold what it was tested with."""
    import tomllib
    import yaml

    root = SCRIPT.parents[3]
    defaults = yaml.safe_load((root / "roles" / "ray" / "defaults" / "main.yml").read_text())
    worker = tomllib.loads((root / "worker" / "pyproject.toml").read_text())["project"]["dependencies"]
    assert defaults["ray_tune_pip_packages"] == ["ray[tune]=={{ ray_version }}", *worker]
    tune_extra = tomllib.loads((root / "worker" / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"ray[default,tune]=={defaults['ray_version']}" in tune_extra["tune"]
