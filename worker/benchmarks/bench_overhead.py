"""Storage overhead per trial and trials/s with 1, 2, 4, 8 workers.

Three stores, measured in one run, same empty objective, same 3-param space,
RandomSampler everywhere (so the sampler costs the same and no param set repeats):

- hpo-worker: `hpo-worker run --processes W` (fenced journal, claims, heartbeats);
- hpo-worker+standby: the same with a replica as standby (each COMPLETE waits for it);
- optuna-redis: JournalStorage(JournalRedisBackend) on the same redis-server;
- optuna-sqlite: RDBStorage on a SQLite file.

Throughput = COMPLETE trials / (last datetime_complete - first datetime_start),
read back from each store, so process start-up is not counted. Per-trial
overhead = 1 / throughput with one worker.

Each figure is the median of --repeat runs (SQLite: one run).

    python benchmarks/bench_overhead.py [--workers 1,2,4,8] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from conftest import PASSWORD, RedisProc, load_trials, start_worker, worker_env, write_spec  # noqa: E402

SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0},
         "y": {"type": "int", "low": 0, "high": 1_000_000},
         "c": {"type": "categorical", "choices": ["a", "b", "c"]}}


def plain_worker(kind: str, url: str, study: str, total: int) -> None:
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalRedisBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalRedisBackend(url)) if kind == "optuna-redis" else RDBStorage(url)
    s = optuna.create_study(study_name=study, storage=storage, sampler=optuna.samplers.RandomSampler(),
                            load_if_exists=True)

    def objective(trial):
        trial.suggest_float("x", 0.0, 1.0)
        trial.suggest_int("y", 0, 1_000_000)
        trial.suggest_categorical("c", ["a", "b", "c"])
        return 0.0

    s.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(total, states=(optuna.trial.TrialState.COMPLETE,))])


def throughput(trials) -> tuple[int, float]:
    done = [t for t in trials if t.state.name == "COMPLETE"]
    t0 = min(t.datetime_start for t in done)
    t1 = max(t.datetime_complete for t in done)
    return len(done), len(done) / (t1 - t0).total_seconds()


def run(worker_counts: list[int], per_worker: int, base: int, sqlite_cap: int, repeat: int) -> dict:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalRedisBackend

    tmp = Path(tempfile.mkdtemp(prefix="hpo-bench-ovh-"))
    r = RedisProc(tmp, "redis").start()
    standby = RedisProc(tmp, "standby", replicaof=r).start()
    counter = iter(range(1_000_000))

    def hpo(w: int, total: int, with_standby: bool) -> tuple[int, float]:
        r.client().flushall()
        name = f"hpo{next(counter)}"
        spec = write_spec(tmp / f"{name}.yaml", name=name, sampler={"type": "random"}, space=SPACE,
                          budget={"n_trials": total}, objective="objectives:empty",
                          worker={"heartbeat_interval": 2.0, "heartbeat_ttl": 10.0})
        endpoints = [r.endpoint, standby.endpoint] if with_standby else [r.endpoint]
        p = start_worker(spec, endpoints, worker_env(tmp / "unused.jsonl"), processes=w, log=tmp / f"{name}.log")
        if p.wait(900) != 0:
            raise SystemExit(f"hpo-worker failed; see {tmp}/{name}.log")
        return throughput(load_trials(r.endpoint, name))

    def plain(kind: str, w: int, total: int) -> tuple[int, float]:
        name = f"{kind}{next(counter)}"
        if kind == "optuna-redis":
            r.client().flushall()
            url = f"redis://:{PASSWORD}@127.0.0.1:{r.port}"
        else:
            url = f"sqlite:///{tmp / name}.db"
            optuna.storages.RDBStorage(url)  # create the schema once, before the workers race
        procs = [subprocess.Popen([sys.executable, __file__, "_plain", kind, url, name, str(total)])
                 for _ in range(w)]
        for pp in procs:
            if pp.wait(900) != 0:
                raise SystemExit(f"{kind} worker failed")
        st = JournalStorage(JournalRedisBackend(url)) if kind == "optuna-redis" else optuna.storages.RDBStorage(url)
        return throughput(optuna.load_study(study_name=name, storage=st).get_trials(deepcopy=False))

    def median_of(times: int, fn, *args) -> dict:
        runs = [fn(*args) for _ in range(times)]
        return {"complete": runs[0][0], "trials_per_s": round(statistics.median(x[1] for x in runs), 1),
                "runs": [round(x[1], 1) for x in runs]}

    rows = []
    try:
        for w in worker_counts:
            total = max(base, per_worker * w)
            row = {"workers": w, "trials": total}
            # interleaved, so each store sees the same machine conditions
            row["hpo-worker"] = median_of(repeat, hpo, w, total, False)
            row["optuna-redis"] = median_of(repeat, plain, "optuna-redis", w, total)
            row["hpo-worker+standby"] = median_of(repeat, hpo, w, total, True)
            row["optuna-sqlite"] = median_of(1, plain, "optuna-sqlite", w, min(total, sqlite_cap))
            row["ratio_time_per_trial_hpo_vs_optuna_redis"] = round(
                row["optuna-redis"]["trials_per_s"] / row["hpo-worker"]["trials_per_s"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        standby.stop()
        r.stop()
    return {"repeat": repeat, "rows": rows}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_plain":
        plain_worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--trials", type=int, default=100, help="trials per worker (at least --base in all)")
    ap.add_argument("--base", type=int, default=600)
    ap.add_argument("--repeat", type=int, default=3, help="runs per store and worker count; the median is kept")
    ap.add_argument("--sqlite-trials", type=int, default=150,
                    help="cap on SQLite trials per run (it is 10-40x slower; keeps the run bounded)")
    ap.add_argument("--json")
    a = ap.parse_args()
    t0 = time.monotonic()
    out = run([int(x) for x in a.workers.split(",")], a.trials, a.base, a.sqlite_trials, a.repeat)
    print()
    print(f"{'workers':>7} {'trials':>6} {'hpo t/s':>8} {'hpo+sb t/s':>10} {'redis t/s':>9} {'sqlite t/s':>10} "
          f"{'hpo ms/trial':>12} {'redis ms/trial':>14} {'hpo/redis time':>14}")
    for r in out["rows"]:
        h, o, s = r["hpo-worker"]["trials_per_s"], r["optuna-redis"]["trials_per_s"], r["optuna-sqlite"]["trials_per_s"]
        hs = r["hpo-worker+standby"]["trials_per_s"]
        print(f"{r['workers']:>7} {r['trials']:>6} {h:>8.1f} {hs:>10.1f} {o:>9.1f} {s:>10.1f} {1000 / h:>12.2f} "
              f"{1000 / o:>14.2f} {o / h:>14.3f}")
    print(f"benchmark took {time.monotonic() - t0:.0f}s")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
