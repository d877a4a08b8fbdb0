"""Ray Tune on a test-bed cluster converged like molecule/cluster, measured in one run:

1. the same random-search experiment (examples/tune-digits' MLP, N trials of E epochs) on
   one node and on every node: two specs in one `hpo-tune submit` job, the one-node run
   pinned to the head by a resource only the head declares (--pin: molecule/cluster gives
   the head head_slot = its CPUs); speed-up = one-node wall time / all-nodes wall time;
2. Tune against the systemd Optuna workers on the same objective and budget: the
   all-nodes Tune run of (1) against `hpo-worker run` started with systemd-run on every
   node (the worker venv the role installs, the workers' store settings, as many
   processes as the node's Ray CPUs), the objective tune_digits.plain (the same E epochs
   of the same MLP, no Ray). trials/s = trials / (last end - first start), both read back
   from the store; Tune's job wall time (submit to end) is given too.

    python benchmarks/bench_tune_cluster.py [--cluster cluster] [--trials 16] [--epochs 3]
        [--json benchmarks/results/tune_cluster.json]

Run as root on the test-bed host, on a cluster converged by the cluster scenario (for
example `molecule converge -s cluster`): Tune's packages and scikit-learn in the Ray venv,
/srv/testbed-shared (bin/testbed) as Tune's storage_path. The test-bed nodes share this
machine's cores: the one-node/all-nodes ratio says what spreading costs or gains here,
not what separate machines would give. The host's load average is recorded with the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CODE = PROJECT / "examples" / "tune-digits" / "code"
SPACE = {"hidden": {"type": "int", "low": 16, "high": 64, "step": 16},
         "lr": {"type": "float", "low": 0.0005, "high": 0.05, "log": True},
         "alpha": {"type": "float", "low": 0.00001, "high": 0.01, "log": True}}
STORE_KEYS = ("HPO_KEYDB_ENDPOINTS", "HPO_KEYDB_USERNAME", "HPO_KEYDB_PASSWORD", "HPO_NAMESPACE")


def testbed(cluster: str, *args: str, check: bool = True) -> str:
    out = subprocess.run([str(PROJECT / "bin" / "testbed"), "--cluster", cluster, *args],
                         capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise SystemExit(f"bin/testbed {' '.join(args)}: exit {out.returncode}: {out.stderr.strip()}")
    return out.stdout


def ssh(cluster: str, node: str, command: str, check: bool = True) -> str:
    return testbed(cluster, "ssh", node, command, check=check)


def nodes_of(cluster: str) -> dict[str, str]:
    """{node: cluster_address} from the test bed's generated inventory."""
    inv = yaml.safe_load(Path(testbed(cluster, "inventory").strip()).read_text())
    hosts = inv["all"]["children"]["testbed_nodes"]["hosts"]
    return {name: h["cluster_address"] for name, h in sorted(hosts.items())}


def ray_cpus(cluster: str, node: str) -> int:
    start = ssh(cluster, node, "systemctl show ray -p ExecStart --value")
    for word in start.split():
        if word.startswith("--num-cpus="):
            return int(word.split("=", 1)[1].rstrip(";"))
    raise SystemExit(f"{node}: no --num-cpus in the ray unit's ExecStart")


def read_trials(cluster: str, head: str, study: str) -> list[dict]:
    cmd = ("set -a; . /etc/hpo-worker/keydb.env; set +a; "
           f"/opt/hpo-worker/venv/bin/hpo-worker trials --json --study {study}")
    out = ssh(cluster, head, f"bash -c {shlex.quote(cmd)}")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def throughput(trials: list[dict]) -> dict:
    done = [t for t in trials if t["state"] == "COMPLETE"]
    if not done:
        return {"complete": 0}
    start = min(dt.datetime.fromisoformat(t["datetime_start"]) for t in done)
    end = max(dt.datetime.fromisoformat(t["datetime_complete"]) for t in done)
    span = (end - start).total_seconds()
    hosts: dict[str, int] = {}
    for t in done:
        h = (t.get("hpo") or {}).get("host", "?")
        hosts[h] = hosts.get(h, 0) + 1
    return {"complete": len(done), "span_s": round(span, 2), "trials_per_s": round(len(done) / span, 4),
            "per_host": dict(sorted(hosts.items()))}


def tune_spec(path: Path, name: str, n: int, epochs: int, resources: dict) -> Path:
    d = {"name": name, "objective": "tune_digits.mlp:train", "metric": "accuracy", "direction": "maximize",
         "epochs": epochs, "space": SPACE, "budget": {"n_trials": n, "timeout": 1800},
         "search": {"type": "random", "seed": 7}, "resources_per_trial": resources,
         "storage_path": "/srv/testbed-shared/tune-bench"}
    p = path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def run_tune(cluster: str, nodes: dict[str, str], head: str, n: int, epochs: int, tag: str,
             pin: dict[str, float]) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        tmpd = Path(tmp)
        token = tmpd / "token"
        token.write_text(ssh(cluster, head, "cat /etc/ray/auth_token").strip())
        token.chmod(0o600)
        env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
        for line in ssh(cluster, head, "cat /etc/hpo-worker/keydb.env").splitlines():
            key, _, value = line.partition("=")
            if key in STORE_KEYS and value.strip():
                env[key] = shlex.split(value)[0]
        one, every = f"bench-tune-1node-{tag}", f"bench-tune-{len(nodes)}nodes-{tag}"
        specs = [tune_spec(tmpd, one, n, epochs, {"cpu": 1, **pin}),
                 tune_spec(tmpd, every, n, epochs, {"cpu": 1})]
        cmd = [str(BIN / "hpo-tune"), "submit", *map(str, specs), "--code-dir", str(CODE),
               "--address", f"http://{nodes[head]}:8265", "--results", str(tmpd / "cmp"), "--timeout", "3000"]
        t0 = time.monotonic()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        job_s = time.monotonic() - t0
        if res.returncode != 0:
            raise SystemExit(f"hpo-tune submit exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}")
        summaries = {s["experiment"]: s for s in json.loads((tmpd / "cmp.json").read_text())}
    out = {}
    for key, name in (("one_node", one), ("all_nodes", every)):
        s = summaries[name]
        out[key] = {"study": name, "wall_time_s": s["wall_time_s"], "hosts": s["hosts"], "best": s["best"],
                    "store": throughput(read_trials(cluster, head, name))}
    out["job_s"] = round(job_s, 1)
    return out


def run_workers(cluster: str, nodes: dict[str, str], head: str, n: int, epochs: int, tag: str) -> dict:
    name = f"bench-workers-{tag}"
    space = dict(SPACE, epochs={"type": "categorical", "choices": [epochs]})
    spec = {"name": name, "direction": "maximize", "objective": "tune_digits.plain:objective",
            "sampler": {"type": "random", "seed": 7}, "space": space, "budget": {"n_trials": n, "timeout": 1800}}
    remote = f"/var/tmp/hpo-bench-{tag}"
    unit = f"hpo-bench-{tag}"
    files = {"spec.yaml": yaml.safe_dump(spec)}
    for f in sorted((CODE / "tune_digits").glob("*.py")):
        files[f"code/tune_digits/{f.name}"] = f.read_text()
    t0 = time.monotonic()
    for node in nodes:
        for rel, text in files.items():
            ssh(cluster, node,
                f"mkdir -p {remote}/code/tune_digits && cat > {remote}/{rel} <<'EOF_BENCH'\n{text}EOF_BENCH")
        ssh(cluster, node, f"chmod -R a+rX {remote}")
    for node in nodes:
        procs = ray_cpus(cluster, node)
        ssh(cluster, node, " ".join([
            "systemd-run", f"--unit={unit}", "--uid=hpo-worker", "--gid=hpo-worker",
            "-p", "EnvironmentFile=/etc/hpo-worker/keydb.env", f"--working-directory={remote}",
            "-E", "OMP_NUM_THREADS=1", "-E", f"HOME={remote}", "-E", "PYTHONDONTWRITEBYTECODE=1",
            "/opt/hpo-worker/venv/bin/hpo-worker", "run", f"{remote}/spec.yaml", "--processes", str(procs),
            "--code-dir", f"{remote}/code", "--host-label", node, "--log-level", "WARNING"]))
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        active = [nd for nd in nodes
                  if ssh(cluster, nd, f"systemctl is-active {unit}", check=False).strip() in ("active", "activating")]
        if not active:
            break
        time.sleep(2)
    wall = time.monotonic() - t0
    failed = [nd for nd in nodes if ssh(cluster, nd, f"systemctl is-failed {unit}", check=False).strip() == "failed"]
    for node in nodes:
        ssh(cluster, node, f"systemctl reset-failed {unit} 2>/dev/null; rm -rf {remote}", check=False)
    if failed:
        raise SystemExit(f"the benchmark's worker unit {unit} failed on {failed}: journalctl -u {unit} there")
    return {"study": name, "wall_s_with_start": round(wall, 1),
            "processes": {nd: ray_cpus(cluster, nd) for nd in nodes},
            "store": throughput(read_trials(cluster, head, name))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cluster", default="cluster")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--pin", default="head_slot=1", metavar="RESOURCE=AMOUNT",
                    help="what each trial of the one-node run also asks for: a resource only the head has"
                         " (default head_slot=1, molecule/cluster's; gpu=0.5 pins to a cluster whose only GPU"
                         " node is the head)")
    ap.add_argument("--json", default=str(PROJECT / "benchmarks" / "results" / "tune_cluster.json"))
    args = ap.parse_args()
    nodes = nodes_of(args.cluster)
    head = next(iter(nodes))
    tag = time.strftime("%H%M%S")
    load_before = os.getloadavg()
    key, _, amount = args.pin.partition("=")
    pin = {key: float(amount or 1)}
    tune = run_tune(args.cluster, nodes, head, args.trials, args.epochs, tag, pin)
    workers = run_workers(args.cluster, nodes, head, args.trials, args.epochs, tag)
    load_after = os.getloadavg()
    speedup = tune["one_node"]["wall_time_s"] / tune["all_nodes"]["wall_time_s"]
    t_rate = tune["all_nodes"]["store"]["trials_per_s"]
    w_rate = workers["store"]["trials_per_s"]
    result = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cluster": args.cluster, "nodes": list(nodes), "trials": args.trials, "epochs": args.epochs,
        "one_node_pin": pin,
        "load_avg_before": [round(x, 2) for x in load_before], "load_avg_after": [round(x, 2) for x in load_after],
        "tune": tune, "workers": workers,
        "speedup_all_nodes_vs_one_node": round(speedup, 3),
        "tune_vs_workers_trials_per_s": round(t_rate / w_rate, 3),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"random search, {args.trials} trials x {args.epochs} epochs;"
          f" load {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"  Tune, one node ({head}):   {tune['one_node']['wall_time_s']:.1f} s")
    print(f"  Tune, {len(nodes)} nodes:          {tune['all_nodes']['wall_time_s']:.1f} s   speed-up {speedup:.2f}x")
    print(f"  trials/s from the store: Tune {t_rate:.3f}, systemd workers {w_rate:.3f}"
          f"  (Tune / workers {t_rate / w_rate:.2f}x)")
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
