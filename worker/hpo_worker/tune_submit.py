"""hpo-tune: check Tune experiment specs and submit them to the cluster through the Ray Jobs API.

``hpo-tune submit SPEC [SPEC ...] --code-dir DIR --address http://HEAD:8265`` checks every
spec on this machine first (exit 2 naming the file and the field), then sends one Ray job:
the code directory and the specs as its ``working_dir``, this package as a ``py_module``,
the store settings as environment variables, ``python -m hpo_worker.tune SPEC ...`` as its
entrypoint. It prints the job's log as it comes (the driver's progress lines: trials done,
running, stopped early, exploited, best so far), then a comparison table of the experiments
(best score, trials, stopped early, exploited, wall time), also written as JSON and CSV
with ``--results PREFIX``. Exit 0 when the job succeeded, 1 when it failed (the trials'
errors are in the log printed above), 2 on bad input, 3 when the job did not end in time.

Ray's token: the Jobs SDK reads ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` (or
``RAY_AUTH_TOKEN``) from the environment, as ``ray job submit`` does (docs/security.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .spec import SpecError
from .tune import SUMMARY_TAG
from .tune_spec import load_tune_spec

SPEC_DIR = "_hpo_specs"
STORE_ENV = ("HPO_KEYDB_ENDPOINTS", "HPO_KEYDB_USERNAME", "HPO_KEYDB_PASSWORD", "HPO_NAMESPACE")
COLUMNS = ("experiment", "search", "metric", "mode", "best", "trials", "failed", "stopped_early", "exploited",
           "wall_time_s", "hosts")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpo-tune", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    val = sub.add_parser("validate", help="check Tune experiment specs (no Ray, no store)")
    val.add_argument("specs", nargs="+", metavar="SPEC")
    sm = sub.add_parser("submit", help="run experiments on the cluster as one Ray job and follow it")
    sm.add_argument("specs", nargs="+", metavar="SPEC", help="run one after another, in this order")
    sm.add_argument("--code-dir", required=True, help="directory with the objectives' packages (the job's"
                                                      " working_dir; Ray's size limit applies: 500 MiB)")
    sm.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                    help="the head's dashboard, http://HEAD:8265 (env RAY_ADDRESS)")
    sm.add_argument("--results", metavar="PREFIX", help="write the comparison to PREFIX.json and PREFIX.csv")
    sm.add_argument("--storage-path", metavar="PATH",
                    help="Tune's storage_path for every spec given (overrides the specs'): on several nodes a"
                         " directory every node sees, e.g. an NFS mount (docs/tune.md)")
    sm.add_argument("--pip", action="append", default=[], metavar="REQ",
                    help="a pip requirement the job installs on the nodes (runtime_env pip); repeatable")
    sm.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the job (default 3600);"
                                                                  " then it is stopped and hpo-tune exits 3")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        specs = [load_tune_spec(path) for path in args.specs]
    except SpecError as exc:
        print(f"hpo-tune: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "validate":
        for s in specs:
            print(f"{s.path}: ok ({s.name}: search {s.search['type']}, {s.n_trials} trials of at most"
                  f" {s.epochs} epochs, resources per trial {s.resources})")
        return 0
    if not args.address:
        print("hpo-tune: error: --address: required (or RAY_ADDRESS), e.g. http://HEAD:8265", file=sys.stderr)
        return 2
    if not os.environ.get("HPO_KEYDB_ENDPOINTS"):
        print("hpo-tune: error: HPO_KEYDB_ENDPOINTS: required (the store's masters, host:port,...)", file=sys.stderr)
        return 2
    if not Path(args.code_dir).is_dir():
        print(f"hpo-tune: error: --code-dir: not a directory: {args.code_dir}", file=sys.stderr)
        return 2
    if args.storage_path is not None and not args.storage_path.startswith("/"):
        print(f"hpo-tune: error: --storage-path: must be an absolute path (a directory every node sees),"
              f" got {args.storage_path!r}", file=sys.stderr)
        return 2
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        print(f"hpo-tune: error: two specs have the same name: {names}", file=sys.stderr)
        return 2
    return submit(args, specs)


def submit(args: argparse.Namespace, specs: list) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    import hpo_worker

    with tempfile.TemporaryDirectory(prefix="hpo-tune-") as tmp:
        wd = Path(tmp) / "job"
        shutil.copytree(args.code_dir, wd, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
        (wd / SPEC_DIR).mkdir(exist_ok=True)
        rel = []
        for i, s in enumerate(specs):
            dest = wd / SPEC_DIR / f"{i:02d}-{Path(s.path).name}"
            shutil.copyfile(s.path, dest)
            rel.append(f"{SPEC_DIR}/{dest.name}")
        env = {k: os.environ[k] for k in STORE_ENV if os.environ.get(k)}
        runtime_env: dict[str, Any] = {"working_dir": str(wd), "env_vars": env,
                                       "py_modules": [str(Path(hpo_worker.__file__).parent)]}
        if args.pip:
            runtime_env["pip"] = list(args.pip)
        client = JobSubmissionClient(args.address)
        opts = ["--storage-path", args.storage_path] if args.storage_path else []
        entry = " ".join(shlex.quote(a) for a in ["python", "-m", "hpo_worker.tune", *opts, *rel])
        deadline = time.monotonic() + 120
        while True:
            try:
                job = client.submit_job(entrypoint=entry, runtime_env=runtime_env,
                                        metadata={"hpo_tune": ",".join(s.name for s in specs)})
                break
            except RuntimeError as exc:
                # a head that just started answers 500 until its dashboard agent registers
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                print("hpo-tune: the head has no job agent yet; trying again", file=sys.stderr, flush=True)
                time.sleep(3)
    print(f"hpo-tune: submitted job {job} to {args.address}: {', '.join(s.name for s in specs)}", flush=True)
    summaries, status = follow(client, job, args.timeout)
    if summaries:
        print()
        print(render_table(summaries))
        if args.results:
            write_results(args.results, summaries)
            print(f"hpo-tune: comparison written to {args.results}.json and {args.results}.csv")
    if status is None:
        client.stop_job(job)
        print(f"hpo-tune: job {job} did not end within {args.timeout:g} s; stopped it", file=sys.stderr)
        return 3
    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(job)
        print(f"hpo-tune: job {job} {status.value}: {info.message or ''}".rstrip(), file=sys.stderr)
        return 1
    print(f"hpo-tune: job {job} succeeded")
    return 0


def follow(client: Any, job: str, timeout: float) -> tuple[list[dict[str, Any]], Any]:
    """Print the job's log as it grows until the job ends; its summaries and final status
    (None when it did not end within ``timeout`` seconds)."""
    seen = 0
    deadline = time.monotonic() + timeout
    status = None
    while True:
        status = client.get_job_status(job)
        logs = client.get_job_logs(job)
        if len(logs) > seen:
            sys.stdout.write(logs[seen:])
            sys.stdout.flush()
            seen = len(logs)
        if status.value in TERMINAL:
            break
        if time.monotonic() > deadline:
            status = None
            break
        time.sleep(1.0)
    return parse_summaries(client.get_job_logs(job)), status


def parse_summaries(log_text: str) -> list[dict[str, Any]]:
    out = []
    for line in log_text.splitlines():
        i = line.find(SUMMARY_TAG + " ")
        if i >= 0:
            out.append(json.loads(line[i + len(SUMMARY_TAG) + 1:]))
    return out


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list):
        return " ".join(map(str, v))
    return "-" if v is None else str(v)


def render_table(summaries: list[dict[str, Any]]) -> str:
    rows = [[_cell(s.get(c)) for c in COLUMNS] for s in summaries]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def write_results(prefix: str, summaries: list[dict[str, Any]]) -> None:
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.json").write_text(json.dumps(summaries, indent=2, sort_keys=True) + "\n")
    with open(f"{prefix}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for s in summaries:
            w.writerow([" ".join(s[c]) if c == "hosts" else s.get(c) for c in COLUMNS])


if __name__ == "__main__":
    sys.exit(main())
