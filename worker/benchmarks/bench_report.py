"""Report time on 8 studies x 8,000 trials.

Writes a journal in Optuna's own entry format (what the workers write: trial
created RUNNING, 3 params, the hpo user attr with the host, COMPLETE) for 8
studies x 8,000 trials from 8 hosts, interleaved as a cluster writes them, into
a redis-server started here. Then times, in one run:

- `hpo-worker report` (CLI, whole process): the first run (no cache: every
  journal replayed, the cache written), after --append new trials per study
  (only they are replayed), with the cache up to date (all studies, one study),
  and with --no-cache; its in-process table time without cache;
- the same table computed the way the user's notes do: Optuna replays the
  journal (JournalStorage) and the table is built from get_trials().

They must agree: the cached table line for line with --no-cache's and the
in-process one, that one with Optuna's on every count, mean and median.

    python benchmarks/bench_report.py [--studies 8] [--trials 8000] [--append 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from conftest import PASSWORD, RedisProc  # noqa: E402

HOSTS = {"m8": 1.9, "M10": 1.93, "bric": 3.6, "m1": 3.68, "m5": 4.42, "M4": 4.61, "m9": 2.0, "m2": 3.0}


DIST = {"a": json.dumps({"name": "FloatDistribution",
                         "attributes": {"log": False, "step": None, "low": 0.0, "high": 1.0}}),
        "b": json.dumps({"name": "IntDistribution", "attributes": {"log": False, "step": 1, "low": 0, "high": 100}}),
        "c": json.dumps({"name": "CategoricalDistribution", "attributes": {"choices": ["x", "y"]}})}
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _trial(rng: random.Random, s: int, i: int) -> list[str]:
    """The entries of trial ``i`` of study ``s`` (one journal per study: trial ids count within it)."""
    hosts = list(HOSTS)
    host = hosts[(i + s) % len(hosts)]
    wid = f"w-{host}"
    start = T0 + timedelta(seconds=i * 0.5)
    dur = max(0.01, rng.gauss(HOSTS[host], 0.05))
    end = (start + timedelta(seconds=dur)).isoformat(timespec="microseconds")
    return [json.dumps({"op_code": 4, "worker_id": wid, "study_id": 0,
                        "datetime_start": start.isoformat(timespec="microseconds")}),
            json.dumps({"op_code": 5, "worker_id": wid, "trial_id": i, "param_name": "a",
                        "param_value_internal": rng.random(), "distribution": DIST["a"]}),
            json.dumps({"op_code": 5, "worker_id": wid, "trial_id": i, "param_name": "b",
                        "param_value_internal": rng.randrange(101), "distribution": DIST["b"]}),
            json.dumps({"op_code": 5, "worker_id": wid, "trial_id": i, "param_name": "c",
                        "param_value_internal": rng.randrange(2), "distribution": DIST["c"]}),
            json.dumps({"op_code": 8, "worker_id": wid, "trial_id": i,
                        "user_attr": {"hpo": {"host": host, "pid": 1, "token": f"{wid}/{i}"}}}),
            json.dumps({"op_code": 6, "worker_id": wid, "trial_id": i, "state": 1,
                        "values": [rng.random()], "datetime_complete": end})]


def synthesize(client, studies: int, trials: int, seed: int = 7) -> None:
    """Journals of ``studies`` studies with ``trials`` COMPLETE trials each, interleaved by trial."""
    client.delete(*[f"hpo:journal:study_{s}" for s in range(studies)])
    for s in range(studies):
        client.rpush(f"hpo:journal:study_{s}", json.dumps({"op_code": 0, "worker_id": "synth",
                                                            "study_name": f"study_{s}", "directions": [1]}))
        client.sadd("hpo:studies", f"study_{s}")
    append_trials(client, studies, 0, trials, seed)
    client.set("hpo:writer", f"1 127.0.0.1:{client.connection_pool.connection_kwargs['port']}")


def append_trials(client, studies: int, first: int, n: int, seed: int = 7) -> None:
    """Trials ``first`` .. ``first + n - 1`` of every study, as the workers append them."""
    rng = random.Random(seed * 1_000_003 + first)
    entries: dict[int, list[str]] = {s: [] for s in range(studies)}
    pipe = client.pipeline(transaction=False)
    for i in range(first, first + n):
        for s in range(studies):
            out = entries[s]
            out.extend(_trial(rng, s, i))
            if len(out) > 20_000:
                pipe.rpush(f"hpo:journal:study_{s}", *out)
                pipe.execute()
                out.clear()
    for s, out in entries.items():
        if out:
            pipe.rpush(f"hpo:journal:study_{s}", *out)
    pipe.execute()


def optuna_table(endpoint: str) -> tuple[dict, float]:
    """What the notes do: replay with Optuna, then group get_trials() by host."""
    import optuna
    from hpo_worker.backend import FencedJournalBackend
    from hpo_worker.store import Store
    from optuna.storages import JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    store = Store([endpoint], password=PASSWORD)
    store.elect(wait=5, promote=False)
    out = {}
    for name in sorted(store.writer.smembers(store.k_studies)):
        storage = JournalStorage(FencedJournalBackend(store, 0, name))
        fs = storage.get_all_studies()[0]
        trials = storage.get_all_trials(fs._study_id, deepcopy=False)
        done = [t for t in trials if t.state.name == "COMPLETE"]
        per = {}
        for t in done:
            per.setdefault(t.user_attrs["hpo"]["host"], []).append(
                (t.datetime_complete - t.datetime_start).total_seconds())
        out[fs.study_name] = {"COMPLETE": len(done),
                              "hosts": {h: (statistics.fmean(v), statistics.median(v), len(v)) for h, v in per.items()}}
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--trials", type=int, default=8000)
    ap.add_argument("--append", type=int, default=100, help="trials appended to every study after the first report")
    ap.add_argument("--json")
    a = ap.parse_args()

    from hpo_worker.report import render, run_report
    from hpo_worker.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="hpo-bench-report-"))
    r = RedisProc(tmp, "redis").start()
    try:
        t0 = time.perf_counter()
        synthesize(r.client(), a.studies, a.trials)
        synth_s = time.perf_counter() - t0

        env = dict(os.environ, HPO_KEYDB_PASSWORD=PASSWORD, HPO_CACHE_DIR=str(tmp / "cache"))

        def cli_run(*extra: str) -> tuple[list[str], float]:
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "hpo_worker", "report", "--endpoints", r.endpoint, *extra],
                               env=env, capture_output=True, text=True, timeout=600)
            took = time.perf_counter() - t0
            if p.returncode != 0:
                raise SystemExit(p.stderr)
            return p.stdout.splitlines(), took

        _, cold_s = cli_run()  # the first report: every journal replayed whole, the cache written
        append_trials(r.client(), a.studies, a.trials, a.append)  # new trials since that report
        n_trials = a.trials + a.append
        appended, appended_s = cli_run()  # replays only the new entries
        whole, whole_s = cli_run("--no-cache")
        assert appended[:-1] == whole[:-1], "the cached report differs from the report replayed whole"
        lines, cli_s = cli_run()  # cache up to date
        _, one_s = cli_run("--study", f"study_{min(3, a.studies - 1)}")
        n_entries = sum(r.client().llen(f"hpo:journal:study_{s}") for s in range(a.studies))

        store = Store([r.endpoint], password=PASSWORD)
        store.elect(wait=5, promote=False)
        reports, table_s = run_report(store.writer, store)
        assert render(reports, 0).splitlines()[:-1] == whole[:-1]

        ref, optuna_s = optuna_table(r.endpoint)
        for rep in reports:
            o = ref[rep.name]
            assert rep.counts["COMPLETE"] == o["COMPLETE"] == n_trials, (rep.name, rep.counts, o["COMPLETE"])
            for h in rep.hosts:
                m, med, n = o["hosts"][h.host]
                assert n == h.count and abs(m - h.mean) < 1e-6 and abs(med - h.median) < 1e-6, (rep.name, h)
        out = {"studies": a.studies, "trials_per_study": n_trials, "journal_entries": n_entries,
               "synthesize_s": round(synth_s, 2), "hpo_table_s": round(table_s, 3),
               "hpo_cli_s": round(cli_s, 3), "hpo_cli_one_study_s": round(one_s, 3),
               "hpo_cli_first_s": round(cold_s, 3), "hpo_cli_after_append_s": round(appended_s, 3),
               "hpo_cli_no_cache_s": round(whole_s, 3),
               "optuna_replay_table_s": round(optuna_s, 3),
               "speedup_vs_optuna_replay": round(optuna_s / table_s, 1),
               "load_average": [round(x, 1) for x in os.getloadavg()]}
        cli = argparse.Namespace(stdout="\n".join(lines))
        print(cli.stdout.splitlines()[0:6])
        print("...")
        print(cli.stdout.splitlines()[-1])
        print(json.dumps(out, indent=2))
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=2))
    finally:
        r.stop()


if __name__ == "__main__":
    main()
