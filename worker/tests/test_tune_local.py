"""Tune experiments end to end on this machine, no test bed: a real one-node Ray head on
127.0.0.1 (the control venv's ray, token authentication as the roles set it, 2 CPUs and a
custom resource) and a real redis-server as the store. `hpo-tune submit` sends the specs
through the Ray Jobs API with the sample objective (examples/tune-digits, no download);
the trials must then be in the store, through the fenced journal, and in `hpo-worker report`.

Runs in bin/test's "worker tests" stage (and so in `bin/test --fast`). The multi-node checks
(trials on every node, GPU placement) belong to the test bed and are not here.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import PASSWORD, RedisProc, free_port, load_trials

REPO = Path(__file__).resolve().parents[2]
CODE = REPO / "examples" / "tune-digits" / "code"
BIN = Path(sys.executable).parent
SPACE = {"hidden": {"type": "int", "low": 16, "high": 64, "step": 16},
         "lr": {"type": "float", "low": 0.0005, "high": 0.05, "log": True},
         "alpha": {"type": "float", "low": 0.00001, "high": 0.01, "log": True}}


def _kill_group(proc: subprocess.Popen, tag: str) -> None:
    """Stop the Ray head we started: its process group, then any process left that runs under
    our own temp dir (Ray's daemons carry it on their command line)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(15)
            break
        except subprocess.TimeoutExpired:
            continue
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if tag in cmdline:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.fixture(scope="module")
def ray_head():
    tmp = Path(tempfile.mkdtemp(prefix="hpo-ray-", dir="/tmp"))  # short: Ray's unix sockets live under it
    token = tmp / "token"
    token.write_text(secrets.token_urlsafe(32))
    token.chmod(0o600)
    # RAY_raylet_start_wait_time_s: on a loaded 2-core machine the raylet can take over a minute
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               RAY_raylet_start_wait_time_s="180", PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    gcs, dash, client_port, agent = free_port(), free_port(), free_port(), free_port()
    lo = 30000 + (os.getpid() % 200) * 100  # a worker-port range of our own
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           f"--ray-client-server-port={client_port}", f"--dashboard-agent-listen-port={agent}",
           f"--min-worker-port={lo}", f"--max-worker-port={lo + 99}", "--num-cpus=2", "--num-gpus=0",
           '--resources={"fast_disk": 2}', "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           "--include-dashboard=true", f"--temp-dir={tmp}/ray", "--disable-usage-stats"]
    log = open(tmp / "ray-start.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        # ready when the Jobs API answers our token (a bearer token, docs/security.md)
        req = urllib.request.Request(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token.read_text()}"})
        deadline = time.time() + 200
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited {proc.returncode}: {(tmp / 'ray-start.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:  # not up yet (refused, 503, ...)
                if time.time() > deadline:
                    raise
            time.sleep(1)
        yield {"address": address, "env": env, "tmp": tmp}
    finally:
        _kill_group(proc, str(tmp))
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def store_server(tmp_path_factory):
    r = RedisProc(tmp_path_factory.mktemp("tune-store"), "r").start()
    yield r
    r.stop()


def spec(path: Path, name: str, search, n_trials: int, epochs: int, **extra) -> Path:
    d = {"name": name, "objective": "tune_digits.mlp:train", "metric": "accuracy", "direction": "maximize",
         "epochs": epochs, "space": SPACE, "budget": {"n_trials": n_trials, "timeout": 240},
         "search": search, "resources_per_trial": {"cpu": 1},
         # Tune's results and checkpoints in the test's directory, not ~/ray_results
         "storage_path": str(path / "tune-results")}
    d.update(extra)
    p = path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def submit(ray_head, store_server, specs, results: Path | None = None, timeout: int = 300):
    env = dict(ray_head["env"], HPO_KEYDB_ENDPOINTS=store_server.endpoint, HPO_KEYDB_PASSWORD=PASSWORD)
    cmd = [str(BIN / "hpo-tune"), "submit", *map(str, specs), "--code-dir", str(CODE),
           "--address", ray_head["address"], "--timeout", str(timeout - 20)]
    if results:
        cmd += ["--results", str(results)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def report(store_server) -> str:
    env = dict(os.environ, HPO_KEYDB_PASSWORD=PASSWORD)
    out = subprocess.run([str(BIN / "hpo-worker"), "report", "--endpoints", store_server.endpoint, "--no-cache"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_every_search_records_its_trials(ray_head, store_server, tmp_path):
    """One job, five tiny experiments: random, asha, optuna, optuna+asha, pbt."""
    # one trial per CPU at a time (2 actors, reused from trial to trial): few process starts
    specs = [
        spec(tmp_path, "t-random", {"type": "random", "seed": 1}, 2, 2,
             resources_per_trial={"cpu": 1, "fast_disk": 1}),
        spec(tmp_path, "t-asha", {"type": "asha", "seed": 2, "grace_period": 1, "reduction_factor": 2}, 4, 4),
        spec(tmp_path, "t-optuna", "optuna", 2, 2, sampler={"type": "tpe", "seed": 3, "n_startup_trials": 1}),
        spec(tmp_path, "t-optuna-asha", {"type": "optuna+asha", "grace_period": 1, "reduction_factor": 2}, 4, 4,
             sampler={"type": "random", "seed": 4}),
        spec(tmp_path, "t-pbt", {"type": "pbt", "seed": 5, "perturbation_interval": 2, "quantile_fraction": 0.5,
                                 "synch": True, "hyperparam_mutations": ["lr", "alpha"]}, 2, 4),
    ]
    t0 = time.monotonic()
    res = submit(ray_head, store_server, specs, results=tmp_path / "cmp", timeout=900)
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:]
    assert "trials done" in res.stdout  # the driver's progress lines came through the job log
    summaries = {s["experiment"]: s for s in json.loads((tmp_path / "cmp.json").read_text())}
    assert list(summaries) == ["t-random", "t-asha", "t-optuna", "t-optuna-asha", "t-pbt"]
    csv_lines = (tmp_path / "cmp.csv").read_text().splitlines()
    assert csv_lines[0].startswith("experiment,search,metric,mode,best,trials") and len(csv_lines) == 6
    for name in summaries:  # the table printed at the end
        assert any(line.startswith(name + " ") for line in res.stdout.splitlines()), name
    host = socket.gethostname()
    for name, s in summaries.items():
        assert s["failed"] == 0 and s["errors"] == [], s
        assert 0.5 < s["best"] <= 1.0, s
        trials = load_trials(store_server.endpoint, name)
        want = {"t-random": 2, "t-asha": 4, "t-optuna": 2, "t-optuna-asha": 4, "t-pbt": 2}[name]
        assert len(trials) == want == s["trials"], (name, len(trials))
        for t in trials:
            assert t.state.name == "COMPLETE", (name, t.number, t.state)
            hpo = t.user_attrs["hpo"]
            assert hpo["host"] == host and hpo["search"] == s["search"] and hpo["duration"] > 0, hpo
            assert t.intermediate_values, (name, t.number)
        assert max(t.value for t in trials) == pytest.approx(s["best"])
    # ASHA stopped some trials before max_t (and the store says which)
    for name in ("t-asha", "t-optuna-asha"):
        trials = load_trials(store_server.endpoint, name)
        early = [t for t in trials if t.user_attrs["hpo"]["stopped_early"]]
        assert early and summaries[name]["stopped_early"] == len(early), name
        assert all(t.user_attrs["hpo"]["epochs"] < 4 for t in early)
    # PBT: an exploit step, and a trial restarted from a checkpoint
    pbt = summaries["t-pbt"]
    assert pbt["exploited"] >= 1 and pbt["restored"] >= 1, pbt
    assert any(t.user_attrs["hpo"]["exploited"] for t in load_trials(store_server.endpoint, "t-pbt"))
    # hpo-worker report: the per-host table of every experiment
    text = report(store_server)
    for name, n in (("t-random", 2), ("t-asha", 4), ("t-optuna", 2), ("t-optuna-asha", 4), ("t-pbt", 2)):
        block = text.split(f" {name}\n", 1)[1].split("\n\n", 1)[0]
        assert f"COMPLETE: {n}  (evaluated {n}," in block, block
        assert block.splitlines()[2].startswith(f"{host}:") and block.splitlines()[2].split()[-1] == str(n), block
    print(f"five experiments in one job: {took:.1f} s")


def test_failing_objective_fails_submit(ray_head, store_server, tmp_path):
    bad = spec(tmp_path, "t-fail", {"type": "random"}, 1, 2, objective="tune_digits.mlp:fail")
    res = submit(ray_head, store_server, [bad], timeout=240)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
    assert "the objective failed on purpose" in res.stdout
    assert "FAILED" in res.stderr
    trials = load_trials(store_server.endpoint, "t-fail")
    assert [t.state.name for t in trials] == ["FAIL"]
