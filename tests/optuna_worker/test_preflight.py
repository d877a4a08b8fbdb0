"""The role's preflight on bad input: it stops before any change and names
the host and the variable. Runs the real playbooks/workers.yml (its first
play is the preflight) with only the preflight tag against a local
connection (asserts only: nothing is installed or changed on this machine).
That a refusal stops a whole site.yml run: tests/cluster/test_preflight.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = ["ansible-playbook", "playbooks/workers.yml", "--tags", "optuna_worker_preflight"]
SAMPLE = REPO / "examples" / "sample-study"
DIGITS = {"name": "digits-svc", "spec": str(SAMPLE / "study.yaml"), "code_dir": str(SAMPLE / "code")}


def run(tmp_path: Path, **overrides) -> subprocess.CompletedProcess:
    host_vars = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "cluster_address": "198.18.200.1", "ray_num_cpus": 2, "keydb_password": "pw"}
    group_vars = {"optuna_worker_studies": [{"name": "digits-svc", "spec": str(SAMPLE / "study.yaml"),
                                             "code_dir": str(SAMPLE / "code")}]}
    for key, value in overrides.items():
        (host_vars if key in host_vars else group_vars)[key] = value
    inventory = {"all": {"vars": group_vars, "children": {
        "keydb": {"hosts": {"box-a": host_vars}},
        "optuna_workers": {"hosts": {"box-a": None}}}}}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_BECOME="false", ANSIBLE_CACHE_PLUGIN="memory")
    bindir = Path(sys.executable).parent
    argv = [str(bindir / PLAYBOOK[0]), "-i", str(path), *PLAYBOOK[1:], "-e", "ansible_become=false"]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_good_input_passes(tmp_path: Path) -> None:
    result = run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"keydb_password": ""}, ["box-a", "optuna_worker_keydb_password"]),
        ({"cluster_address": ""}, ["box-a", "optuna_worker_keydb_endpoints", "cluster_address"]),
        ({"ray_num_cpus": 0}, ["box-a", "optuna_worker_processes"]),
        ({"optuna_worker_studies": [{"name": "bad name", "spec": str(SAMPLE / "study.yaml"),
                                     "code_dir": str(SAMPLE / "code")}]},
         ["box-a", "optuna_worker_studies", "bad name"]),
        ({"optuna_worker_studies": [{"name": "x", "spec": "/nonexistent/study.yaml",
                                     "code_dir": str(SAMPLE / "code")}]},
         ["box-a", "optuna_worker_studies", "/nonexistent/study.yaml"]),
        ({"optuna_worker_studies": [DIGITS, DIGITS]},
         ["box-a", "same name"]),
        ({"optuna_worker_studies": [dict(DIGITS, name="digits")]},
         ["box-a", "entry 'digits'", "whose name is 'digits-svc'"]),
    ],
    ids=["empty-password", "no-cluster-address", "zero-processes", "bad-study-name", "missing-spec",
         "duplicate-study", "name-differs-from-spec"],
)
def test_bad_input_is_named(tmp_path: Path, overrides: dict, words: list[str]) -> None:
    result = run(tmp_path, **overrides)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for word in words:
        assert word in output, f"{word!r} not in:\n{output}"
    assert "changed=0" in output, output
