"""Ray Tune on the cluster scenario's three nodes (docs/tune.md).

`hpo-tune submit` runs on this machine (the controller: the project's .venv) and sends the
specs through the head's Jobs API with the cluster's Ray token, as a person would; the
trials run in the nodes' Ray virtualenv, where roles/ray installed Tune's packages and
scikit-learn (ray_extra_pip_packages in molecule.yml): no runtime_env pip. Tune's
storage_path is /srv/testbed-shared, one host directory bound into every node by the test
bed (docs/testbed.md), standing in for the NFS share a real cluster needs: PBT saves a
checkpoint on one node and may restore it on another.

One job (its trials on every node), four tiny experiments (random, ASHA, Optuna+ASHA, PBT)
and a GPU experiment (cluster-1 is the only node with ray_num_gpus > 0), then a failing objective
through playbooks/tune.yml.
Every trial must be in the store, with its host, and in `hpo-worker report` (read on
cluster-1 with the workers' store settings). Runs before test_security.py and
test_lifecycle.py (conftest.py): all three nodes are up.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))
from verify_helpers import (  # noqa: E402
    ENV_FILE,
    PROJECT,
    RUNNER,
    VENV,
    ansible_playbook,
    node,
    recorder,
    trials,
    with_store_env,
)

HEAD = RUNNER.get_hosts("ray_head")[0]
HEAD_VARS = RUNNER.get_variables(HEAD)
ADDRESS = f"http://{HEAD_VARS['cluster_address']}:{HEAD_VARS.get('ray_head_dashboard_port', 8265)}"
NODES = sorted(RUNNER.get_hosts("ray_head") + RUNNER.get_hosts("ray_workers"))
GPU_NODES = sorted(n for n in NODES if float(RUNNER.get_variables(n).get("ray_num_gpus", 0)) > 0)
HPO_TUNE = Path(sys.executable).with_name("hpo-tune")
CODE = PROJECT / "examples" / "tune-digits" / "code"
SHARED = "/srv/testbed-shared"  # bound into every node by bin/testbed
SPACE = {"hidden": {"type": "int", "low": 16, "high": 48, "step": 16},
         "lr": {"type": "float", "low": 0.0005, "high": 0.05, "log": True},
         "alpha": {"type": "float", "low": 0.00001, "high": 0.01, "log": True}}
record = recorder("cluster-figures.json")


def spec(directory: Path, name: str, search, n_trials: int, epochs: int, **extra) -> Path:
    d = {"name": name, "objective": "tune_digits.mlp:train", "metric": "accuracy", "direction": "maximize",
         "epochs": epochs, "space": SPACE, "budget": {"n_trials": n_trials, "timeout": 300},
         "search": search, "resources_per_trial": {"cpu": 1}, "storage_path": f"{SHARED}/tune"}
    d.update(extra)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture(scope="module")
def submit_env(tmp_path_factory):
    """The controller's environment for hpo-tune: the cluster's Ray token (a 0600 file) and the
    store settings the workers use (read from their root-only file on the head)."""
    d = tmp_path_factory.mktemp("tune-auth")
    token = d / "token"
    token.write_text(HEAD_VARS["ray_auth_token"])
    token.chmod(0o600)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    for line in node(HEAD).check_output(f"cat {ENV_FILE}").splitlines():
        key, _, value = line.partition("=")
        if key in ("HPO_KEYDB_ENDPOINTS", "HPO_KEYDB_USERNAME", "HPO_KEYDB_PASSWORD", "HPO_NAMESPACE"):
            env[key] = shlex.split(value)[0] if value.strip() else ""
    assert env.get("HPO_KEYDB_ENDPOINTS"), f"no HPO_KEYDB_ENDPOINTS in {HEAD}:{ENV_FILE}"
    return env


def submit(env, specs, results: Path | None = None, timeout: int = 420) -> subprocess.CompletedProcess:
    assert HPO_TUNE.exists(), f"{HPO_TUNE} is missing: bin/setup installs worker/[tune] into .venv"
    cmd = [str(HPO_TUNE), "submit", *map(str, specs), "--code-dir", str(CODE), "--address", ADDRESS,
           "--timeout", str(timeout - 30)]
    if results:
        cmd += ["--results", str(results)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def report_block(study: str) -> str:
    out = node(HEAD).run(with_store_env(f"{VENV}/bin/hpo-worker report --study {study}"))
    assert out.rc == 0, out.stderr
    return out.stdout


def test_a_tune_node_has_its_packages() -> None:
    """roles/ray put Tune, the store client and the objective's package in the Ray venv."""
    for n in NODES:
        out = node(n).run("/opt/ray/venv/bin/python -c 'import ray.tune, optuna, redis, yaml, sklearn, pyarrow'")
        assert out.rc == 0, (n, out.stderr[-2000:])


def test_every_search_on_three_nodes(submit_env, tmp_path) -> None:
    gpu = [{"cpu": 1, "gpu": 0.5}]
    specs = [
        # four 1-CPU trials fill the cluster's four CPUs (cluster-1: 2, the others 1 each)
        spec(tmp_path, "tune-random", {"type": "random", "seed": 1}, 4, 2),
        # ASHA one trial at a time (run concurrently, the order trials reach a rung decides).
        # A trial goes on from a rung only when it is in the top 1/reduction_factor of those
        # recorded there before it: 4 of 4 and then 6 trials, so that stopping none is unlikely
        # (with 2 and 4 trials a run on the bed once stopped none: about 1 in 8 by chance)
        spec(tmp_path, "tune-asha", {"type": "asha", "seed": 2, "grace_period": 1, "reduction_factor": 4}, 6, 4,
             max_concurrent_trials=1),
        spec(tmp_path, "tune-optuna-asha", {"type": "optuna+asha", "grace_period": 1, "reduction_factor": 4}, 6, 4,
             sampler={"type": "tpe", "seed": 4, "n_startup_trials": 2}, max_concurrent_trials=1),
        spec(tmp_path, "tune-pbt", {"type": "pbt", "seed": 5, "perturbation_interval": 2, "quantile_fraction": 0.5,
                                    "synch": True, "hyperparam_mutations": ["lr", "alpha"]}, 2, 4),
        spec(tmp_path, "tune-gpu", {"type": "random", "seed": 6}, 2, 1, resources_per_trial=gpu[0]),
        # a custom resource of the inventory (ray_resources), asked for by name: one experiment
        # on each worker node (on an idle cluster Ray may put every other trial on the head)
        spec(tmp_path, "tune-on-cluster-2", {"type": "random", "seed": 7}, 1, 1,
             resources_per_trial={"cpu": 1, "slot_2": 1}),
        spec(tmp_path, "tune-on-cluster-3", {"type": "random", "seed": 8}, 1, 1,
             resources_per_trial={"cpu": 1, "slot_3": 1}),
    ]
    t0 = time.monotonic()
    res = submit(submit_env, specs, results=tmp_path / "cmp")
    took = time.monotonic() - t0
    record(tune_five_experiments_s=round(took, 1))
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-3000:]
    summaries = {s["experiment"]: s for s in json.loads((tmp_path / "cmp.json").read_text())}
    want = {"tune-random": 4, "tune-asha": 6, "tune-optuna-asha": 6, "tune-pbt": 2, "tune-gpu": 2,
            "tune-on-cluster-2": 1, "tune-on-cluster-3": 1}
    assert list(summaries) == list(want)
    csv_lines = (tmp_path / "cmp.csv").read_text().splitlines()
    assert csv_lines[0].startswith("experiment,search,metric,mode,best,trials") and len(csv_lines) == 1 + len(want)
    assert "trials done" in res.stdout  # the driver's progress lines came through the job log
    for name in want:  # the comparison table printed at the end
        assert any(line.startswith(name + " ") for line in res.stdout.splitlines()), name
    hosts: dict[str, list[str]] = {}
    for name, n in want.items():
        s = summaries[name]
        assert s["failed"] == 0 and s["errors"] == [] and s["trials"] == n, s
        stored = trials(HEAD, name)
        assert len(stored) == n and all(t["state"] == "COMPLETE" for t in stored), (name, stored)
        assert all(t["hpo"]["search"] == s["search"] and t["hpo"]["duration"] > 0 for t in stored), stored
        assert max(t["value"] for t in stored) == pytest.approx(s["best"])
        hosts[name] = [t["host"] for t in stored]
        # hpo-worker report: the same per-host table as a worker study, one row per host that ran trials
        text = report_block(name)
        assert f"COMPLETE: {n}  (evaluated {n}," in text, text
        rows = dict(re.findall(r"^(\S+):\s+[\d.]+\s+[\d.]+\s+(\d+)\s*$", text, flags=re.MULTILINE))
        assert {h: int(c) for h, c in rows.items()} == {h: hosts[name].count(h) for h in set(hosts[name])}, text
    print("hosts per experiment:", hosts)
    # the custom resources placed their trials, so the job's trials ran on every node (which
    # node takes the other trials is Ray's choice: on an idle cluster, all went to the head)
    assert hosts["tune-on-cluster-2"] == ["cluster-2"] and hosts["tune-on-cluster-3"] == ["cluster-3"], hosts
    assert sorted({h for hs in hosts.values() for h in hs}) == NODES, hosts
    # ASHA (Tune's random and Optuna's TPE) stopped some trials before max_t
    for name in ("tune-asha", "tune-optuna-asha"):
        early = [t for t in trials(HEAD, name) if t["hpo"]["stopped_early"]]
        assert early and summaries[name]["stopped_early"] == len(early), (name, summaries[name])
    # PBT: an exploit step, and a trial restored from a checkpoint on the shared storage
    pbt = summaries["tune-pbt"]
    assert pbt["exploited"] >= 1 and pbt["restored"] >= 1, pbt
    # the GPU trials ran only where the inventory declares a GPU
    assert GPU_NODES == ["cluster-1"]
    assert set(hosts["tune-gpu"]) == set(GPU_NODES), hosts["tune-gpu"]
    record(tune_hosts=hosts)


def test_failing_objective_fails_the_playbook(tmp_path) -> None:
    """playbooks/tune.yml (hpo-tune submit from the controller, the token and the store
    credential from the inventory) with an objective that raises: the play fails, naming
    hpo-tune's exit status, and shows the trial's error; the trial is FAIL in the store."""
    bad = spec(tmp_path, "tune-fail", {"type": "random"}, 1, 2, objective="tune_digits.mlp:fail")
    res = ansible_playbook("tune.yml", "-e", f"tune_spec={bad}", "-e", f"tune_code_dir={CODE}",
                           "-e", "tune_timeout=240", timeout=420)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-4000:]
    assert "hpo-tune submit exited 1" in out, out[-4000:]
    assert "the objective failed on purpose" in out, out[-4000:]
    assert [t["state"] for t in trials(HEAD, "tune-fail")] == ["FAIL"]
