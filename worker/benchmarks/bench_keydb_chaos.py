"""Chaos on real KeyDB: the writer master SIGKILLed three times mid-study, restarted.

Each run: two keydb-server 6.3.4 active replicas on loopback (the binaries of
KeyDB's own packages, see worker/tests/conftest.py), 2 hosts x 3 hpo-worker
processes listing the masters in opposite orders, 400 COMPLETE trials on an
800-point space, the writer killed (SIGKILL) three times and restarted from its
data directory. Two variants, interleaved:

- guard:    restarted through roles/keydb/files/keydb-rejoin-guard (what the
            keydb role's ExecStartPre does): old data moved aside, resync;
- no guard: restarted straight from its stale data (AOF);
- freeze:   (with the guard) the writer first stopped with SIGSTOP for 20 s, its
            sockets open and silent, as a host that hung or lost power looks to
            the others; then killed and restarted like a rebooted node.

Per run: failover time (kill -> first evaluation on the survivor), results
lost, params evaluated twice, trials RUNNING, COMPLETE values that belong to
other params, and whether both masters ended with identical journals.

    python benchmarks/bench_keydb_chaos.py [--runs 10] [--no-guard-runs 3] [--freeze-runs 5] [--json out.json]
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

from conftest import KeyDBProc, keydb_bin, wait_for  # noqa: E402
from test_keydb import chaos_run  # noqa: E402

VARIANTS = {"guard": "with rejoin guard (SIGKILL x3)", "no guard": "restart from stale data (no guard)",
            "freeze": "writer frozen 20 s like a powered-off host (x2), then rebooted through the guard"}


def one(tmp: Path, variant: str) -> dict:
    bindir = keydb_bin()
    group = [KeyDBProc(tmp, f"k{i}", bindir) for i in range(2)]
    for k in group:
        k.peers = [o for o in group if o is not k]
    try:
        for k in group:
            k.start()
        wait_for(lambda: all(k.links_up() for k in group), 20, "links up")
        t0 = time.monotonic()
        if variant == "freeze":
            r = chaos_run(tmp, group, kills=2, guard=True, freeze=20.0, n_trials=800, sleep=0.5)
        else:
            r = chaos_run(tmp, group, kills=3, guard=variant == "guard")
        r["seconds"] = round(time.monotonic() - t0, 1)
    except AssertionError as exc:  # a run that could not finish is a result too
        r = {"error": str(exc)[-3000:]}
    finally:
        for k in group:
            k.stop()
    r["variant"] = variant
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="runs with the rejoin guard")
    ap.add_argument("--no-guard-runs", type=int, default=3, help="runs restarting from stale data")
    ap.add_argument("--freeze-runs", type=int, default=0, help="runs with the writer frozen (SIGSTOP)")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "keydb_chaos.json")
    args = ap.parse_args()
    # interleave the variants so that machine load hits both alike
    counts = {"guard": args.runs, "no guard": args.no_guard_runs, "freeze": args.freeze_runs}
    order = [v for i in range(max(counts.values())) for v, n in counts.items() if i < n]
    results = []
    for i, variant in enumerate(order):
        with tempfile.TemporaryDirectory(prefix="hpo-chaos-") as tmp:
            r = one(Path(tmp), variant)
        results.append(r)
        print(f"run {i + 1}/{len(order)} {variant}: {json.dumps(r)}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    for variant, title in VARIANTS.items():
        rs = [r for r in results if r["variant"] == variant and "error" not in r]
        errors = sum(1 for r in results if r["variant"] == variant and "error" in r)
        if not rs and not errors:
            continue
        fo = [f for r in rs for f in r["failover_s"]]
        print(f"\n{title}: {len(rs)} runs finished, {errors} did not")
        if rs:
            print(f"  failover s: median {statistics.median(fo):.2f}, max {max(fo):.2f} ({len(fo)} kills)")
            for k in ("lost", "twice", "running", "wrong_values"):
                print(f"  {k}: total {sum(r[k] for r in rs)} (per run {[r[k] for r in rs]})")
            print(f"  identical journals: {sum(r['identical'] for r in rs)}/{len(rs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
