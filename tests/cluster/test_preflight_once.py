"""Each preflight check runs once per run: playbooks/preflight.yml runs the
checks of the roles in the run and records it per host (_preflight_passed);
the roles' own tasks/main.yml then skips the same checks. A role used alone,
in a play no preflight came before, still runs them.

No nodes: the real playbooks against a local connection, preflight tags
only, in --check mode. Counted in the run's output: how many times a check
ran (ok) on a host, against how many times it was skipped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "sample-study"
BIN = Path(sys.executable).parent
STUDY = {"name": "digits-svc", "spec": str(SAMPLE / "study.yaml"), "code_dir": str(SAMPLE / "code")}
WORKERS_CHECK = "optuna_worker : Check the KeyDB endpoints and password"
STORE_CHECK = "keydb : Refuse an empty password"


def run(tmp_path: Path, playbook: str, *tags: str) -> str:
    # s: the store, bound to an address this machine has (the store's check
    # refuses any other; nothing dials it in --check mode); w: an Optuna worker.
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    data = {"all": {
        "vars": {**local, "keydb_engine": "redis", "keydb_password": "pw", "optuna_worker_studies": [STUDY]},
        "hosts": {"s": {"cluster_address": "198.18.211.1",
                       "keydb_bind_address": "{{ ansible_facts['all_ipv4_addresses'][0] }}"},
                 "w": {"cluster_address": "198.18.211.2"}},
        "children": {"keydb": {"hosts": {"s": None}}, "optuna_workers": {"hosts": {"w": None}}}}}
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump(data, sort_keys=False))
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_CACHE_PLUGIN="memory", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
               ANSIBLE_DISPLAY_SKIPPED_HOSTS="1", ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"))
    done = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inv), playbook, "--check",
                           "-e", "ansible_become=false", "--tags", ",".join(tags)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return output


def outcomes(output: str, task: str, host: str) -> list[str]:
    """What each run of TASK did on HOST, in order: ok, skipping, failed..."""
    found = []
    for header, body in re.findall(r"^TASK \[(.+?)\] \**\n(.*?)(?=^TASK \[|^PLAY |\Z)", output, re.M | re.S):
        if header == task:
            found += re.findall(rf"^(\w+): \[{re.escape(host)}\]", body, re.M)
    return found


def test_site_runs_each_check_once(tmp_path: Path) -> None:
    output = run(tmp_path, "site.yml", "keydb_preflight", "optuna_worker_preflight")
    assert outcomes(output, WORKERS_CHECK, "w") == ["ok", "skipping"], output[-3000:]
    assert outcomes(output, STORE_CHECK, "s") == ["ok", "skipping"], output[-3000:]


def test_a_part_alone_runs_its_checks_once(tmp_path: Path) -> None:
    output = run(tmp_path, "playbooks/workers.yml", "optuna_worker_preflight")
    assert outcomes(output, WORKERS_CHECK, "w") == ["ok", "skipping"], output[-3000:]
    output = run(tmp_path, "playbooks/keydb.yml", "keydb_preflight")
    assert outcomes(output, STORE_CHECK, "s") == ["ok", "skipping"], output[-3000:]


def test_a_role_used_alone_still_checks(tmp_path: Path) -> None:
    play = [{"name": "The store role alone, no preflight play before", "hosts": "keydb", "gather_facts": True,
             "roles": ["keydb"]},
            {"name": "The workers role alone, no preflight play before", "hosts": "optuna_workers",
             "gather_facts": True, "roles": ["optuna_worker"]}]
    path = tmp_path / "alone.yml"
    path.write_text(yaml.safe_dump(play))
    output = run(tmp_path, str(path), "keydb_preflight", "optuna_worker_preflight")
    assert outcomes(output, WORKERS_CHECK, "w") == ["ok"], output[-3000:]
    assert outcomes(output, STORE_CHECK, "s") == ["ok"], output[-3000:]
