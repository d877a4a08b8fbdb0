"""Each address is worked out once, in roles/cluster, and every role reads it.

No nodes: ansible-playbook with a local connection against a small inventory.
The workers' store endpoints are read from the Optuna workers' preflight (the
real playbooks/workers.yml, preflight tag only, --check as a safety net);
the Ray addresses from roles/cluster itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "sample-study"
BIN = Path(sys.executable).parent


def inventory(tmp_path: Path, **keydb_a: object) -> Path:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    data = {"all": {
        "vars": {**local, "keydb_password": "pw",
                 "optuna_worker_studies": [{"name": "digits-svc", "spec": str(SAMPLE / "study.yaml"),
                                            "code_dir": str(SAMPLE / "code")}]},
        "hosts": {
            "a": {"cluster_address": "198.18.200.1", "ray_num_cpus": 1, **keydb_a},
            "b": {"cluster_address": "198.18.200.2", "ray_num_cpus": 1, "keydb_port": 6380},
            "c": {"cluster_address": "198.18.200.3", "ray_num_cpus": 1, "ray_node_ip": "198.18.202.3"},
        },
        "children": {
            "keydb": {"hosts": {"a": None, "b": None}},
            "ray_head": {"hosts": {"a": None}},
            "ray_workers": {"hosts": {"b": None, "c": None}},
            "optuna_workers": {"hosts": {"c": None}},
        }}}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def playbook(tmp_path: Path, inv: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_CACHE_PLUGIN="memory", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"))
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inv), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def messages(run: subprocess.CompletedProcess, start: str) -> list[str]:
    """The "msg" values of the run's output that begin with start."""
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    found = [json.loads(m) for m in re.findall(r'^\s*"msg": ("(?:[^"\\]|\\.)*")', run.stdout, re.M)]
    found = [m for m in found if m.startswith(start)]
    assert found, f"no message starting {start!r} in:\n{run.stdout[-3000:]}"
    return found


def workers_dial(tmp_path: Path, **keydb_a: object) -> str:
    run = playbook(tmp_path, inventory(tmp_path, **keydb_a), "playbooks/workers.yml", "--check",
                   "--tags", "optuna_worker_preflight", "-e", "ansible_become=false")
    found = set(messages(run, "c: the workers dial"))
    assert len(found) == 1, found
    return found.pop()


def test_workers_dial_each_store_hosts_cluster_address_and_port(tmp_path: Path) -> None:
    assert workers_dial(tmp_path) == "c: the workers dial 198.18.200.1:6379,198.18.200.2:6380"


def test_workers_follow_keydb_bind_address(tmp_path: Path) -> None:
    # KeyDB on host a binds to (and its peers use) 198.18.201.1: the workers must dial it too.
    assert workers_dial(tmp_path, keydb_bind_address="198.18.201.1") == (
        "c: the workers dial 198.18.201.1:6379,198.18.200.2:6380")


def test_ray_node_ips_and_head_address(tmp_path: Path) -> None:
    play = [{"name": "Show the Ray addresses", "hosts": "c", "gather_facts": False,
             "roles": ["cluster"],
             "tasks": [{"name": "Show", "ansible.builtin.debug": {
                 "msg": "{{ _cluster_ray_node_ips | to_json }}"
                        " {{ _cluster_ray_head_ip }}:{{ _cluster_ray_head_port }}"}}]}]
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump(play))
    inv = inventory(tmp_path, ray_node_ip="198.18.203.1", ray_head_port=6400)
    msg = messages(playbook(tmp_path, inv, str(path)), "{")[0]
    ips, head = msg.rsplit(" ", 1)
    assert json.loads(ips) == {"a": "198.18.203.1", "b": "198.18.200.2", "c": "198.18.202.3"}
    assert head == "198.18.203.1:6400"
