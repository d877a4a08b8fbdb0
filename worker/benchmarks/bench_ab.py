"""Two versions of hpo-worker side by side: throughput and report time, interleaved.

Each worker/ directory given is put on PYTHONPATH of the `hpo-worker` processes
in turn (A, B, A, B, ...), on the same redis-server, so both see the same
machine conditions. Measures:

- trials/s with 1, 2, 4, 8 worker processes, empty objective (as bench_overhead.py);
- `hpo-worker report` and `report --study study_3`, whole process and the time
  it prints, on 8 studies x 8,000 trials (as bench_report.py). B's cache of
  replayed journals (HPO_CACHE_DIR, a version without one ignores it) is timed in
  three states: up to date (`all`, `one`), empty (`*_cold`: the first report;
  its ratio is against A's report of the same journals) and behind by --append
  trials per study (`*_appended`); A runs beside each on the same journals.

Prints medians and B/A ratios (time per trial, report time: < 1 is faster).

    git worktree add /tmp/hpo-before <commit>
    python benchmarks/bench_ab.py /tmp/hpo-before/worker ./ [--repeat 3] [--rounds 5] [--json out.json]
    python benchmarks/bench_ab.py A/worker ./ --skip-overhead --rounds 7   # the report alone

A version from git without a worktree: `git archive COMMIT worker | tar -x -C /tmp/A`.

--python-a/--python-b run a version with another interpreter (a virtualenv with
that version's own dependencies, e.g. one without a dependency B added).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from time import perf_counter

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from bench_overhead import SPACE, throughput  # noqa: E402
from bench_report import append_trials, synthesize  # noqa: E402
from conftest import PASSWORD, RedisProc, load_trials, start_worker, worker_env, write_spec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="worker/ directory of version A (before)")
    ap.add_argument("b", help="worker/ directory of version B (after)")
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5, help="report runs per version")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--python-a", default=sys.executable, help="interpreter for A (default this one)")
    ap.add_argument("--python-b", default=sys.executable, help="interpreter for B (default this one)")
    ap.add_argument("--trials", type=int, default=8000, help="trials per study of the report's 8 studies")
    ap.add_argument("--append", type=int, default=100,
                    help="trials appended to every study before each '_appended' report (default 100)")
    ap.add_argument("--json")
    a = ap.parse_args()
    python = {"A": a.python_a, "B": a.python_b}
    trees = {"A": str(Path(a.a).resolve()), "B": str(Path(a.b).resolve())}
    tmp = Path(tempfile.mkdtemp(prefix="hpo-bench-ab-"))
    os.chdir(tmp)  # `python -m hpo_worker` puts the working directory first on sys.path, before PYTHONPATH
    r = RedisProc(tmp, "redis").start()
    out: dict = {"A": trees["A"], "B": trees["B"], "python": python, "throughput": [], "report": {}}
    n = iter(range(1_000_000))
    try:
        for w in ([] if a.skip_overhead else [int(x) for x in a.workers.split(",")]):
            total = max(600, 100 * w)
            runs: dict[str, list[float]] = {"A": [], "B": []}
            for _ in range(a.repeat):
                for k, path in trees.items():
                    r.client().flushall()
                    name = f"ab{next(n)}"
                    spec = write_spec(tmp / f"{name}.yaml", name=name, sampler={"type": "random"}, space=SPACE,
                                      budget={"n_trials": total}, objective="objectives:empty",
                                      worker={"heartbeat_interval": 2.0, "heartbeat_ttl": 10.0})
                    env = worker_env(tmp / "unused.jsonl", PYTHONPATH=path)
                    p = start_worker(spec, [r.endpoint], env, processes=w, log=tmp / f"{name}.log", python=python[k])
                    if p.wait(900) != 0:
                        raise SystemExit(f"hpo-worker ({k}) failed; see {tmp}/{name}.log")
                    runs[k].append(throughput(load_trials(r.endpoint, name))[1])
            row = {"workers": w, "trials": total, **{f"{k}_trials_per_s": round(statistics.median(v), 1)
                                                     for k, v in runs.items()},
                   "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()}}
            row["B_over_A_time_per_trial"] = round(row["A_trials_per_s"] / row["B_trials_per_s"], 3)
            out["throughput"].append(row)
            print(json.dumps(row), flush=True)

        r.client().flushall()
        synthesize(r.client(), 8, a.trials)
        n_trials = a.trials
        cache = tmp / "report-cache"  # B's cache of replayed journals (A has none: it ignores it)
        times: dict[str, dict[str, list[float]]] = {k: {} for k in trees}
        out["load_average_at_start"] = [round(x, 1) for x in os.getloadavg()]

        def report(k: str, kind: str, extra: list[str]) -> None:
            env = dict(os.environ, PYTHONPATH=trees[k], HPO_KEYDB_PASSWORD=PASSWORD, HPO_LOG_LEVEL="WARNING",
                       HPO_CACHE_DIR=str(cache))
            t0 = perf_counter()
            p = subprocess.run([python[k], "-m", "hpo_worker", "report", "--endpoints", r.endpoint, *extra],
                               env=env, capture_output=True, text=True, check=True)
            times[k].setdefault(kind + "_cli", []).append(perf_counter() - t0)
            times[k].setdefault(kind + "_printed", []).append(float(p.stdout.strip().splitlines()[-1].split()[2]))

        def append() -> None:
            nonlocal n_trials
            append_trials(r.client(), 8, n_trials, a.append)
            n_trials += a.append

        one = ["--study", "study_3"]
        for _ in range(a.rounds):
            # B's cache: "all"/"one" up to date (what a user who runs the report often sees most),
            # "_cold" empty (the first report: replays every journal and writes the cache),
            # "_appended" behind by --append trials per study (the next report after new trials).
            # A has no cache: each of its runs replays every journal it reports; it runs on the
            # same journals as B's up-to-date runs.
            shutil.rmtree(cache, ignore_errors=True)
            report("B", "all_cold", [])
            report("A", "all", [])
            report("B", "all", [])
            report("A", "one", one)
            report("B", "one", one)
            shutil.rmtree(cache, ignore_errors=True)
            report("B", "one_cold", one)
            append()
            report("A", "one_appended", one)
            report("B", "one_appended", one)
            report("B", "fill", [])  # not timed: B's cache of every journal up to date again
            times["B"].pop("fill_cli"), times["B"].pop("fill_printed")
            append()
            report("A", "all_appended", [])
            report("B", "all_appended", [])
        out["report"]["trials_per_study_at_end"] = n_trials
        for k, d in times.items():
            out["report"][k] = {m: round(statistics.median(v), 3) for m, v in d.items()}
        out["report"]["B_over_A"] = {m: round(out["report"]["B"][m] / out["report"]["A"][m], 2)
                                     for m in out["report"]["A"] if m in out["report"]["B"]}
        # B's first report (no cache) against A's report of the same journals
        for kind in ("all", "one"):
            for m in ("cli", "printed"):
                if f"{kind}_cold_{m}" in out["report"]["B"]:
                    out["report"]["B_over_A"][f"{kind}_cold_{m}"] = round(
                        out["report"]["B"][f"{kind}_cold_{m}"] / out["report"]["A"][f"{kind}_{m}"], 2)
        out["report"]["runs"] = {k: {m: [round(x, 3) for x in v] for m, v in d.items()} for k, d in times.items()}
        out["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
        print(json.dumps({k: v for k, v in out.items() if k != "throughput"}, indent=1))
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=2))
    finally:
        r.stop()


if __name__ == "__main__":
    main()
