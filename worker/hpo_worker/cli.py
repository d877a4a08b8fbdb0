"""hpo-worker: run Optuna studies on a KeyDB/Redis group with one fenced writer."""

from __future__ import annotations

import argparse
import logging
import os
import sys

DESCRIPTION = """\
Optuna worker for hpo-cluster.

All writes go to one master of the KeyDB group (the writer, chosen by epoch and
fenced inside every write script); the other masters are standbys. Each distinct
param set is evaluated once across the cluster (atomic claim by fingerprint).
SIGTERM ends the trial in flight, requeues its params and exits 0; SIGINT
finishes the trial first (a second SIGINT acts as SIGTERM).

Store settings: --endpoints or HPO_KEYDB_ENDPOINTS (every master, host:port,
comma-separated, inventory order); the user (ACL user; default: the default
user) only from HPO_KEYDB_USERNAME, the password only from HPO_KEYDB_PASSWORD.
"""

EPILOG = """\
examples:
  hpo-worker validate study.yaml
  HPO_KEYDB_ENDPOINTS=198.18.0.11:6379,198.18.0.12:6379 hpo-worker run study.yaml --processes 4
  hpo-worker report --study demo
  hpo-worker report --html report.html
  hpo-worker dashboard --host 198.18.0.11 --port 8266 --token-file /etc/ray/auth_token

exit codes: 0 done or stopped cleanly; 2 bad input (spec, endpoints, objective);
3 no master reachable; 1 anything else."""


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("store", "the user and password are read only from the environment: HPO_KEYDB_USERNAME,"
                            " HPO_KEYDB_PASSWORD")
    g.add_argument("--endpoints", default=os.environ.get("HPO_KEYDB_ENDPOINTS"),
                   help="every master, host:port comma-separated, inventory order (env HPO_KEYDB_ENDPOINTS)")
    g.add_argument("--namespace", default=os.environ.get("HPO_NAMESPACE", "hpo"),
                   help="key prefix in the store (env HPO_NAMESPACE, default hpo)")
    p.add_argument("--log-level", default=os.environ.get("HPO_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default INFO (env HPO_LOG_LEVEL)")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="hpo-worker", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="run workers for one study until its budget or a stop",
                         description="Run workers for the study in SPEC until its budget is reached or a "
                                     "signal stops them. With --processes N, N worker processes are forked; "
                                     "SIGTERM/SIGINT are forwarded to them; exit 0 when all stopped cleanly.")
    run.add_argument("spec", metavar="SPEC.yaml")
    run.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    run.add_argument("--code-dir", default=os.environ.get("HPO_CODE_DIR"),
                     help="directory prepended to sys.path for the objective (env HPO_CODE_DIR)")
    run.add_argument("--host-label", default=os.environ.get("HPO_HOST_LABEL"),
                     help="name of this host in trials and reports (env HPO_HOST_LABEL, default the hostname)")

    rep = sub.add_parser("report", parents=[common], help="per-host performance table of the studies in the store",
                         description="Per study: the COMPLETE count, then per host the mean and median trial "
                                     "duration and the trial count, fastest first; and how long the report took.")
    rep.add_argument("--study", help="only this study (default: every study in the store)")
    rep.add_argument("--no-cache", action="store_true",
                     help="replay every journal from its first entry, and neither read nor write the cache of"
                          " replayed journals ($HPO_CACHE_DIR, default ~/.cache/hpo-worker)")
    rep.add_argument("--html", metavar="FILE",
                     help="also write one self-contained HTML page to FILE: the table, the optimisation history,"
                          " param importances and per-host durations (plotly; the package's 'html' extra)")

    tri = sub.add_parser("trials", parents=[common], help="every trial of the studies in the store, as JSON lines",
                         description="One JSON object per line and per trial (studies by name, trials by number):"
                                     " study, number, state, params, values, hpo (the worker's user attr),"
                                     " datetime_start, datetime_complete (ISO 8601, UTC, as in the journal)."
                                     " Read-only.")
    tri.add_argument("--json", action="store_true", required=True, help="JSON lines (the only format)")
    tri.add_argument("--study", help="only this study (default: every study in the store)")

    das = sub.add_parser("dashboard", parents=[common],
                         help="optuna-dashboard of every study, read-only, behind a token",
                         description="Serve optuna-dashboard for every study in the store through the read-only"
                                     " storage (it follows a failover; every write is refused with 403). Access"
                                     " needs the token in --token-file (the cluster's Ray token): the header"
                                     " 'Authorization: Bearer TOKEN', or the form at /login, which sets an HttpOnly"
                                     " cookie. Needs the package's 'dashboard' extra (optuna-dashboard).")
    das.add_argument("--host", required=True, help="address to bind (the head's cluster address; not 0.0.0.0)")
    das.add_argument("--port", type=int, default=8266, help="port (default 8266)")
    auth = das.add_mutually_exclusive_group()
    auth.add_argument("--token-file", default=os.environ.get("HPO_DASHBOARD_TOKEN_FILE"),
                      help="file holding the token (env HPO_DASHBOARD_TOKEN_FILE); never the token itself")
    auth.add_argument("--no-auth", action="store_true",
                      help="no token (only for a cluster that runs Ray without one, ray_allow_unauthenticated)")

    val = sub.add_parser("validate", parents=[common], help="check a study spec (and import its objective)",
                         description="Check SPEC; exit 2 naming the file and field when it is invalid. "
                                     "With --code-dir (or HPO_CODE_DIR) the objective is imported too.")
    val.add_argument("spec", metavar="SPEC.yaml")
    val.add_argument("--code-dir", default=os.environ.get("HPO_CODE_DIR"))
    return parser


def _store(args: argparse.Namespace, read_only: bool = False):
    from .election import parse_endpoints

    if not args.endpoints:
        raise ValueError("no store given: set --endpoints or HPO_KEYDB_ENDPOINTS (host:port,host:port)")
    if read_only:
        from .reader import ReadOnlyStore as Store  # no redis-py import: starts 0.15 s sooner
    else:
        from .store import Store
    return Store(parse_endpoints(args.endpoints), password=os.environ.get("HPO_KEYDB_PASSWORD") or None,
                 namespace=args.namespace, username=os.environ.get("HPO_KEYDB_USERNAME") or None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    logging.getLogger("optuna").setLevel(logging.WARNING)
    try:
        if args.command in ("report", "trials"):
            if getattr(args, "html", None):
                from .html_report import require_plotly

                require_plotly()  # before reading anything: a clear message when plotly is missing
            return _read(args)  # reads the journal itself: no Optuna import (0.4 s) unless --html
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if args.command == "dashboard":
            return _dashboard(args)
        if args.command == "validate":
            return _validate(args)
        return _run(args)
    except ValueError as exc:  # SpecError is a ValueError
        print(f"hpo-worker: error: {exc}", file=sys.stderr)
        return 2


def _validate(args: argparse.Namespace) -> int:
    from .objective import load_objective
    from .spec import SpecError, load_spec

    spec = load_spec(args.spec)
    spec.build_sampler()
    _require_memray(spec)
    msg = f"{args.spec}: ok: study {spec.name!r}, {len(spec.space)} params, sampler {spec.sampler['type']}"
    if spec.sampler["type"] == "grid":
        msg += f", {spec.grid_size()} grid points"
    if args.code_dir:
        try:
            load_objective(spec.objective, args.code_dir)
        except ValueError as exc:
            raise SpecError(f"{args.spec}: {exc}") from None
        msg += f", objective {spec.objective} imports"
    print(msg)
    return 0


def _require_memray(spec) -> None:
    """A spec with worker.memray: true where memray cannot be imported: exit 2, saying how to install it."""
    if spec.memray:
        from .memprofile import import_memray
        from .spec import SpecError

        try:
            import_memray()
        except ImportError as exc:
            raise SpecError(f"{spec.path}: worker.memray: true {exc}") from None


def _read(args: argparse.Namespace) -> int:
    """report and trials: read-only (the election never promotes; nothing is written)."""
    from .election import NoWriter, StoreAuthError
    from .report import render, run_report, trial_lines
    from .resp import ReplyError, Unreachable

    store = _store(args, read_only=True)
    try:
        store.elect(wait=10, promote=False)
        if args.command == "trials":
            for line in trial_lines(store.writer, store, args.study):
                sys.stdout.write(line + "\n")
            return 0
        cache = None
        if not args.no_cache:
            from .report_cache import ReportCache, default_dir

            cache = ReportCache(default_dir(), f"{args.namespace} {','.join(sorted(store.endpoints))}",
                                f"{store.record} {store.writer_endpoint_now()}")
        reports, elapsed = run_report(store.writer, store, args.study, cache)
        if args.html:
            written = _write_html(args, store, reports)
    except NoWriter as exc:
        print(f"hpo-worker: error: {exc}", file=sys.stderr)
        return 3
    except KeyError:
        print(f"hpo-worker: error: --study: no study named {args.study!r} in the store", file=sys.stderr)
        return 2
    except StoreAuthError as exc:
        print(f"hpo-worker: error: {exc}", file=sys.stderr)
        return 2
    except Unreachable as exc:
        print(f"hpo-worker: error: the master read from failed: {exc}", file=sys.stderr)
        return 3
    except ReplyError as exc:
        print(f"hpo-worker: error: {store.writer_endpoint_now()} answered: {exc}", file=sys.stderr)
        return 1
    print(render(reports, elapsed))
    if args.html:
        print(written)
    return 0


def _write_html(args: argparse.Namespace, store, reports) -> str:
    """The HTML page of ``reports`` written to ``args.html`` (atomically); says where and how big."""
    import time
    from pathlib import Path

    import optuna

    from .html_report import build_html
    from .readonly_storage import ReadOnlyStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    storage = ReadOnlyStorage(store, copy_trials=False)  # the plots only read the trials
    page = build_html(storage, reports, source=f"{store.writer_endpoint_now()} (writer record {store.record!r})")
    path = Path(args.html)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise ValueError(f"--html: cannot write {args.html}: {exc}") from None
    return f"html report: {path} ({path.stat().st_size} bytes, {time.perf_counter() - t0:.1f} s)"


def _dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard over the read-only storage until stopped."""
    from .dashboard import read_token, serve
    from .election import NoWriter, StoreAuthError
    from .readonly_storage import ReadOnlyStorage

    try:
        import optuna_dashboard  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"dashboard: {exc.name} is not installed: install the package's 'dashboard' extra"
                         " (pip install 'hpo-worker[dashboard]')") from None
    if not args.no_auth and not args.token_file:
        raise ValueError("dashboard: give --token-file (or HPO_DASHBOARD_TOKEN_FILE), or --no-auth for a cluster"
                         " without Ray's token")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port: must be 1-65535, got {args.port}")
    token = None if args.no_auth else read_token(args.token_file)
    store = _store(args, read_only=True)
    try:
        storage = ReadOnlyStorage(store)
    except (NoWriter, StoreAuthError) as exc:
        print(f"hpo-worker: error: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, NoWriter) else 2
    try:
        serve(storage, args.host, args.port, token)
    except OSError as exc:
        raise ValueError(f"--host/--port: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        pass
    return 0


def _run(args: argparse.Namespace) -> int:
    import socket

    from .objective import check_objective_in_fork, load_objective
    from .runner import Worker
    from .spec import SpecError, load_spec
    from .supervisor import run_processes

    spec = load_spec(args.spec)
    _require_memray(spec)
    if args.processes < 1:
        raise ValueError(f"--processes: must be >= 1, got {args.processes}")
    _store(args)  # validate endpoints before forking
    host = args.host_label or socket.gethostname()
    if args.processes == 1:
        try:
            objective = load_objective(spec.objective, args.code_dir)
        except ValueError as exc:
            raise SpecError(f"{args.spec}: {exc}") from None
    else:
        # Import the objective in each child, not in the parent: code that starts
        # threads or a GPU context at import time must not be forked. A throwaway
        # forked process imports it first, so an import error is one message, exit 2.
        objective = None
        try:
            check_objective_in_fork(spec.objective, args.code_dir)
        except ValueError as exc:
            raise SpecError(f"{args.spec}: {exc}") from None

    def make(index: int) -> Worker:
        fn = objective if objective is not None else load_objective(spec.objective, args.code_dir)
        return Worker(spec, _store(args), host, fn, index)

    return run_processes(make, args.processes)


if __name__ == "__main__":
    sys.exit(main())
