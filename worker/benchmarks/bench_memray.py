"""Time per trial with and without the spec's ``worker.memray`` (peak memory per trial).

One redis-server, one worker process, RandomSampler, the same objective and budget for both
modes, measured interleaved in one run (off, on, off, on, ...); each figure is the median of
--repeat runs. Three objectives from tests/objectives.py:

- ``empty``: returns at once, so the figure is memray's fixed cost per trial (start a
  tracker, write and read its capture file, record the peak in the trial);
- ``alloc_work``: a few ms of allocation-heavy work (20,000 floats, 8 buffers of 256 KiB);
- ``record`` sleeping 0.25 s (--sleep-trials trials): a trial of a more usual length.

Time per trial = (last datetime_complete - first datetime_start) / COMPLETE trials, read
back from the store, so process start-up is not counted.

    python benchmarks/bench_memray.py [--trials 200] [--sleep-trials 40] [--repeat 3] [--json results/memray.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from conftest import RedisProc, load_trials, start_worker, worker_env, write_spec  # noqa: E402

SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}
SLEEP = 0.25  # seconds, the third objective


def ms_per_trial(trials) -> float:
    done = [t for t in trials if t.state.name == "COMPLETE"]
    t0 = min(t.datetime_start for t in done)
    t1 = max(t.datetime_complete for t in done)
    return 1000 * (t1 - t0).total_seconds() / len(done)


def run(trials: int, sleep_trials: int, repeat: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="hpo-bench-memray-"))
    r = RedisProc(tmp, "redis").start()
    counter = iter(range(1_000_000))

    def one(objective: str, memray: bool, trials: int, sleep: float) -> float:
        r.client().flushall()
        name = f"{objective}-{'on' if memray else 'off'}-{next(counter)}"
        worker = {"heartbeat_interval": 2.0, "heartbeat_ttl": 10.0}
        if memray:
            worker.update(memray=True, memray_keep=50)
        spec = write_spec(tmp / f"{name}.yaml", name=name, sampler={"type": "random"}, space=SPACE,
                          budget={"n_trials": trials}, objective=f"objectives:{objective}", worker=worker)
        env = worker_env(tmp / "unused.jsonl", sleep, HPO_STATE_DIR=str(tmp / "state"))
        env.pop("HPO_TEST_EVAL_LOG")
        p = start_worker(spec, [r.endpoint], env, log=tmp / f"{name}.log")
        if p.wait(900) != 0:
            raise SystemExit(f"hpo-worker failed; see {tmp}/{name}.log")
        got = load_trials(r.endpoint, name)
        if memray and not all("peak_memory_bytes" in t.user_attrs["hpo"] for t in got if t.state.name == "COMPLETE"):
            raise SystemExit(f"{name}: a COMPLETE trial without peak_memory_bytes")
        return ms_per_trial(got)

    rows = []
    try:
        for label, objective, n, sleep in (("empty", "empty", trials, 0.0),
                                           ("alloc_work", "alloc_work", trials, 0.0),
                                           (f"sleep {SLEEP}s", "record", sleep_trials, SLEEP)):
            runs: dict[str, list[float]] = {"off": [], "on": []}
            for _ in range(repeat):  # interleaved: both modes see the same machine conditions
                runs["off"].append(one(objective, False, n, sleep))
                runs["on"].append(one(objective, True, n, sleep))
            off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
            row = {"objective": label, "trials": n, "ms_per_trial_off": round(off, 2),
                   "ms_per_trial_on": round(on, 2), "ratio_on_vs_off": round(on / off, 2),
                   "extra_ms_per_trial": round(on - off, 2),
                   "runs": {k: [round(x, 2) for x in v] for k, v in runs.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        r.stop()
    return {"repeat": repeat, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=200, help="trials per run (default 200)")
    ap.add_argument("--sleep-trials", type=int, default=40, help=f"trials per run of the {SLEEP} s objective")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode and objective; the median is kept")
    ap.add_argument("--json")
    a = ap.parse_args()
    t0 = time.monotonic()
    out = run(a.trials, a.sleep_trials, a.repeat)
    print()
    print(f"{'objective':>12} {'trials':>6} {'off ms/trial':>12} {'memray ms/trial':>15} {'on/off time':>11}")
    for row in out["rows"]:
        print(f"{row['objective']:>12} {row['trials']:>6} {row['ms_per_trial_off']:>12.2f}"
              f" {row['ms_per_trial_on']:>15.2f} {row['ratio_on_vs_off']:>10.2f}x")
    print(f"benchmark took {time.monotonic() - t0:.0f}s")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
