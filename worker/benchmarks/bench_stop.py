"""Time from SIGTERM to a clean exit, and trials left RUNNING (must be 0).

Cases, each repeated --rounds times, `hpo-worker run --processes 8` with an
objective that sleeps 60 s (so every process has a trial in flight):

- healthy: the store is up;
- store down: the writer is SIGKILLed (no standby) just before SIGTERM, so
  the workers are in their failover wait: the worst case for TimeoutStopSec.

    python benchmarks/bench_stop.py [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from conftest import RedisProc, load_trials, read_evals, start_worker, worker_env, write_spec  # noqa: E402


def one(tmp: Path, i: int, kill_store: bool) -> dict:
    r = RedisProc(tmp, f"r{i}{int(kill_store)}").start()
    try:
        spec = write_spec(tmp / f"s{i}.yaml", name="stop", sampler={"type": "random"},
                          space={"x": {"type": "int", "low": 0, "high": 10_000}}, budget={"n_trials": 100},
                          worker={"heartbeat_interval": 1.0, "heartbeat_ttl": 5.0})
        evals = tmp / f"e{i}{int(kill_store)}.jsonl"
        p = start_worker(spec, [r.endpoint], worker_env(evals, sleep=60), processes=8, log=tmp / f"w{i}.log")
        deadline = time.time() + 120
        while len(read_evals(evals, "start")) < 8:
            if time.time() > deadline:
                raise SystemExit("workers did not start")
            time.sleep(0.05)
        if kill_store:
            r.kill()
            time.sleep(1.5)  # the heartbeat threads notice, the workers are electing
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(120)
        took = time.monotonic() - t0
        running = None
        if not kill_store:
            running = sum(t.state.name == "RUNNING" for t in load_trials(r.endpoint, "stop"))
        return {"rc": rc, "stop_s": round(took, 3), "running_left": running}
    finally:
        r.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hpo-bench-stop-"))
    out = {}
    for case, kill in (("healthy", False), ("store_down", True)):
        runs = [one(tmp, i, kill) for i in range(a.rounds)]
        out[case] = {"runs": runs, "max_stop_s": max(x["stop_s"] for x in runs),
                     "median_stop_s": statistics.median(x["stop_s"] for x in runs),
                     "all_exit_0": all(x["rc"] == 0 for x in runs)}
        print(case, json.dumps(out[case]))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
