"""Duplicate evaluations and wasted objective time: hpo-worker vs plain Optuna.

Same space (50 discrete points), same number of worker processes, same
objective cost, same redis-server, measured in one run:

- TPE (constant_liar=True): budget 200 COMPLETE trials.
- GridSampler: until the grid is done (plain Optuna stops itself; hpo-worker
  stops when every point is COMPLETE).

Plain Optuna = JournalStorage(JournalRedisBackend) + study.optimize in each
process. Every evaluation appends a line to a log; duplicates = evaluations
minus distinct params evaluated.

    python benchmarks/bench_duplicates.py [--workers 8] [--cost 0.05] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from conftest import PASSWORD, RedisProc, read_evals, start_worker, worker_env, write_spec  # noqa: E402

SPACE = {"x": {"type": "int", "low": 0, "high": 9}, "y": {"type": "int", "low": 0, "high": 4}}


def plain_worker(url: str, study: str, sampler_kind: str, n_trials: int) -> None:
    """One plain-Optuna worker process (what the user's notes run today, without the guard)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalRedisBackend

    sys.path.insert(0, str(HERE.parent / "tests"))
    import objectives

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalRedisBackend(url))
    if sampler_kind == "grid":
        sampler = optuna.samplers.GridSampler({"x": list(range(10)), "y": list(range(5))})
    else:
        sampler = optuna.samplers.TPESampler(constant_liar=True, n_startup_trials=10)
    study_obj = optuna.create_study(study_name=study, storage=storage, sampler=sampler, load_if_exists=True)

    def objective(trial):
        params = {"x": trial.suggest_int("x", 0, 9), "y": trial.suggest_int("y", 0, 4)}
        return objectives.record(params)

    callbacks = []
    if sampler_kind != "grid":
        callbacks.append(optuna.study.MaxTrialsCallback(n_trials, states=(optuna.trial.TrialState.COMPLETE,)))
    study_obj.optimize(objective, n_trials=None if sampler_kind == "grid" else n_trials, callbacks=callbacks)


def summarize(evals_path: Path, wall: float) -> dict:
    ev = read_evals(evals_path)
    starts = collections.Counter(json.dumps(e["params"], sort_keys=True) for e in read_evals(evals_path, "start"))
    # pair start/end by (pid, params) in order
    open_ = {}
    durations = collections.defaultdict(list)
    for e in sorted(ev, key=lambda e: e["t"]):
        k = (e["pid"], json.dumps(e["params"], sort_keys=True))
        if e["phase"] == "start":
            open_[k] = e["t"]
        elif k in open_:
            durations[k[1]].append(e["t"] - open_.pop(k))
    n_eval = sum(starts.values())
    distinct = len(starts)
    wasted = sum(sum(sorted(d)[1:]) if len(d) > 1 else 0.0 for d in durations.values())
    total = sum(sum(d) for d in durations.values())
    return {"evaluations": n_eval, "distinct": distinct, "duplicates": n_eval - distinct,
            "wasted_objective_s": round(wasted, 3), "objective_s": round(total, 3), "wall_s": round(wall, 2)}


def run(workers: int, cost: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="hpo-bench-dup-"))
    r = RedisProc(tmp, "redis").start()
    results = {}
    try:
        for kind in ("tpe", "grid"):
            # plain Optuna
            r.client().flushall()
            evals = tmp / f"plain-{kind}.jsonl"
            env = worker_env(evals, sleep=cost)
            url = f"redis://:{PASSWORD}@127.0.0.1:{r.port}"
            t0 = time.monotonic()
            procs = [subprocess.Popen([sys.executable, __file__, "_plain", url, f"plain-{kind}", kind, "200"], env=env)
                     for _ in range(workers)]
            for p in procs:
                if p.wait(600) != 0:
                    raise SystemExit(f"plain optuna worker failed ({kind})")
            results[f"plain-{kind}"] = summarize(evals, time.monotonic() - t0)

            # hpo-worker
            r.client().flushall()
            evals = tmp / f"hpo-{kind}.jsonl"
            sampler = {"type": "grid"} if kind == "grid" else {"type": "tpe", "constant_liar": True,
                                                               "n_startup_trials": 10}
            budget = {} if kind == "grid" else {"n_trials": 200}
            spec = write_spec(tmp / f"{kind}.yaml", name=f"hpo-{kind}", sampler=sampler, space=SPACE, budget=budget,
                              worker={"heartbeat_interval": 1.0, "heartbeat_ttl": 5.0})
            if not budget:
                text = spec.read_text().replace("budget: {}\n", "")
                spec.write_text(text)
            t0 = time.monotonic()
            p = start_worker(spec, [r.endpoint], worker_env(evals, sleep=cost), processes=workers,
                             log=tmp / f"hpo-{kind}.log")
            if p.wait(600) != 0:
                raise SystemExit(f"hpo-worker failed ({kind}); see {tmp}/hpo-{kind}.log")
            results[f"hpo-{kind}"] = summarize(evals, time.monotonic() - t0)
    finally:
        r.stop()
    return {"workers": workers, "objective_cost_s": cost, "points": 50, "results": results}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_plain":
        plain_worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--cost", type=float, default=0.05, help="objective time per evaluation, seconds")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    out = run(a.workers, a.cost)
    print(f"{a.workers} workers, 50-point space, objective {a.cost}s")
    print(f"{'run':<12} {'evals':>6} {'distinct':>8} {'dups':>5} {'wasted s':>9} {'objective s':>11} {'wall s':>7}")
    for name, r in out["results"].items():
        print(f"{name:<12} {r['evaluations']:>6} {r['distinct']:>8} {r['duplicates']:>5} "
              f"{r['wasted_objective_s']:>9.2f} {r['objective_s']:>11.2f} {r['wall_s']:>7.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
