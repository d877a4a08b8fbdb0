"""One preflight for the whole run: site.yml's first play runs the checks of
every role (workers, store, Ray) on every host, and a refusal on one host
stops the run before any change play starts on any host.

No nodes: site.yml against three inventory hosts with a local connection,
in --check mode as a safety net (should a check wrongly pass, nothing on
this machine changes). Each test asserts that the run failed with the
refusal's message, that no play after the preflight started, and that no
host reports a change. The same refusals on real nodes: the ray-preflight
scenario (molecule/ray-preflight) for Ray."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "sample-study"
BIN = Path(sys.executable).parent
CHANGE_PLAYS = ("PLAY [KeyDB store]", "PLAY [Ray head]", "PLAY [Ray workers]", "PLAY [Optuna workers]")
TOKEN = "node-free-test-token-0123456789-abcdefghij"
STUDY = {"name": "digits-svc", "spec": str(SAMPLE / "study.yaml"), "code_dir": str(SAMPLE / "code")}


def cluster(**host_b: object) -> dict:
    """a: Ray head, store; b: Ray worker, store (not an Optuna worker); c: Ray and Optuna worker."""
    return {"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "keydb_engine": "redis", "keydb_password": "pw", "ray_allow_logical_gpus": True,
                 "ray_auth_token": TOKEN, "optuna_worker_studies": [STUDY]},
        "hosts": {
            "a": {"cluster_address": "198.18.210.1", "ray_num_cpus": 1},
            "b": {"cluster_address": "198.18.210.2", "ray_num_cpus": 1, **host_b},
            "c": {"cluster_address": "198.18.210.3", "ray_num_cpus": 1},
        },
        "children": {
            "keydb": {"hosts": {"a": None, "b": None}},
            "ray_head": {"hosts": {"a": None}},
            "ray_workers": {"hosts": {"b": None, "c": None}},
            "optuna_workers": {"hosts": {"c": None}},
        }}}


def site(tmp_path: Path, data: dict, *extra: str) -> str:
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump(data, sort_keys=False))
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_CACHE_PLUGIN="memory",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default", ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"))
    done = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inv), "site.yml", "--check",
                           "-e", "ansible_become=false", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"site.yml passed:\n{output[-3000:]}"
    return output


def assert_stopped_in_the_preflight(output: str, hosts: set[str]) -> None:
    for play in CHANGE_PLAYS:
        assert play not in output, f"{play} started after a refusal:\n{output[-3000:]}"
    recap = dict(re.findall(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", output, re.M))
    assert set(recap) == hosts, recap
    assert all(changed == "0" for changed in recap.values()), recap


def test_a_store_refusal_on_one_host_stops_every_host(tmp_path: Path) -> None:
    # The case: an empty keydb_password on one store host only.
    output = site(tmp_path, cluster(keydb_password=""))
    assert "host b: keydb_password is empty" in output
    assert_stopped_in_the_preflight(output, {"a", "b", "c"})


def test_a_workers_refusal_stops_every_host(tmp_path: Path) -> None:
    data = cluster()
    data["all"]["vars"]["optuna_worker_studies"] = [dict(STUDY, name="digits")]
    output = site(tmp_path, data)
    assert "c: optuna_worker_studies entry 'digits'" in output and "whose name is 'digits-svc'" in output
    assert_stopped_in_the_preflight(output, {"a", "b", "c"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cluster_address": "198.18.210.1"},
         "b: cluster_address 198.18.210.1 is also the node IP of a"),
        ({"ray_num_cpus": "two"}, "b: ray_num_cpus must be a whole number >= 0, not 'two'"),
    ],
    ids=["duplicate-node-ip", "bad-cpu-count"],
)
def test_a_ray_refusal_stops_every_host(tmp_path: Path, change: dict, message: str) -> None:
    # Only the Ray groups: the store's checks would stop first on the
    # addresses this machine does not have.
    data = cluster(**change)
    for group in ("keydb", "optuna_workers"):
        del data["all"]["children"][group]
    output = site(tmp_path, data)
    assert message in output, output[-3000:]
    assert_stopped_in_the_preflight(output, {"a", "b", "c"})


def test_a_ray_refusal_is_found_with_a_host_outside_ray_in_the_play(tmp_path: Path) -> None:
    # The Ray inventory check runs once per run (run_once) inside the Ray
    # include: a host of the preflight play that is no Ray host (w, an Optuna
    # worker only) must not make it skip. The store's checks are left out
    # (-e preflight_parts): they would stop first on this machine's addresses.
    data = cluster(cluster_address="198.18.210.1")
    data["all"]["hosts"] = {"w": {"cluster_address": "198.18.210.4"}, **data["all"]["hosts"]}
    data["all"]["children"]["optuna_workers"]["hosts"] = {"w": None}
    inv = tmp_path / "extra.json"
    inv.write_text('{"preflight_parts": ["workers", "ray"]}')
    output = site(tmp_path, data, "-e", f"@{inv}")
    assert "b: cluster_address 198.18.210.1 is also the node IP of a" in output, output[-3000:]
    assert_stopped_in_the_preflight(output, {"a", "b", "c", "w"})


DIFFERS = "b: ray_auth_token (or ray_allow_unauthenticated) differs from the head a's"


def ray_only(**host_b: object) -> dict:
    """cluster() with the Ray groups only (the store's checks would stop first here)."""
    data = cluster(**host_b)
    for group in ("keydb", "optuna_workers"):
        del data["all"]["children"][group]
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ray_auth_token": ""}, "b: ray_auth_token is not set"),
        ({"ray_auth_token": "short-token"}, "b: ray_auth_token is too weak"),
        ({"ray_auth_token": "a" * 40}, "b: ray_auth_token is too weak"),
        ({"ray_auth_token": "REPLACE-WITH-A-LONG-RANDOM-TOKEN"}, "b: ray_auth_token is too weak"),
        ({"ray_auth_token": TOKEN + " x"}, "b: ray_auth_token is too weak"),
        ({"ray_auth_token": TOKEN[::-1]}, DIFFERS),
        ({"ray_allow_unauthenticated": True}, DIFFERS),
    ],
    ids=["missing", "short", "one-letter", "placeholder", "whitespace", "differs", "opt-out-on-one-host"],
)
def test_a_missing_weak_or_foreign_ray_token_stops_every_host(tmp_path: Path, change: dict, message: str) -> None:
    output = site(tmp_path, ray_only(**change))
    assert message in output, output[-3000:]
    assert TOKEN not in output and TOKEN[::-1] not in output, "the preflight printed a token"
    assert_stopped_in_the_preflight(output, {"a", "b", "c"})


def test_the_opt_out_lets_a_cluster_without_token_pass_the_token_checks(tmp_path: Path) -> None:
    # Every host opts out and has no token: the token checks pass (with a
    # warning) and the run stops at the next check, the node IP, which is
    # not an address of this machine.
    data = ray_only()
    data["all"]["vars"].update(ray_auth_token="", ray_allow_unauthenticated=True)
    output = site(tmp_path, data)
    assert "ray_allow_unauthenticated is true: Ray runs with" in output, output[-3000:]
    assert "ray_auth_token is not set" not in output
    assert "a: cluster_address 198.18.210.1 is not an address of this host" in output, output[-3000:]
    assert_stopped_in_the_preflight(output, {"a", "b", "c"})
