"""Build time and size of `hpo-worker report --html` on 8 studies x 8,000 trials.

The store is bench_report.py's (Optuna's own entry format, 3 params, 8 hosts, every trial
COMPLETE), in a redis-server started here. In one run, each as a whole CLI process:

- `hpo-worker report --no-cache` (the text table alone): the reference;
- `hpo-worker report --no-cache --html FILE` (the table, then the page: every journal replayed
  by Optuna through the read-only storage, the plots drawn); its size, the part of it that is
  plotly's JavaScript, and the same for one study (`--study`);
- in this process, one study's page on the read-only storage with ``copy_trials=False``
  (what ``--html`` uses) and with deep copies of the trials (the storage's default, what
  ``--html`` did first): Optuna's plots ask for deep copies of every trial several times.

    python benchmarks/bench_html.py [--studies 8] [--trials 8000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from bench_report import synthesize  # noqa: E402
from conftest import PASSWORD, RedisProc  # noqa: E402


def page_in_process(endpoint: str, study: str, copy_trials: bool) -> float:
    """Seconds to build one study's page on a new read-only storage (its replay included)."""
    import optuna
    from hpo_worker.html_report import build_html
    from hpo_worker.readonly_storage import read_only_storage
    from hpo_worker.report import run_report

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    storage = read_only_storage([endpoint], password=PASSWORD, copy_trials=copy_trials)
    reports, _ = run_report(storage._store.writer, storage._store, study)
    build_html(storage, reports)
    return round(time.perf_counter() - t0, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--trials", type=int, default=8000)
    ap.add_argument("--json")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hpo-bench-html-"))
    r = RedisProc(tmp, "redis").start()
    try:
        synthesize(r.client(), a.studies, a.trials)
        env = dict(os.environ, HPO_KEYDB_PASSWORD=PASSWORD, HPO_CACHE_DIR=str(tmp / "cache"))

        def cli_run(*extra: str) -> tuple[str, float]:
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "hpo_worker", "report", "--no-cache", "--endpoints",
                                r.endpoint, *extra], env=env, capture_output=True, text=True, timeout=1800)
            took = time.perf_counter() - t0
            if p.returncode != 0:
                raise SystemExit(p.stderr)
            return p.stdout, took

        _, text_s = cli_run()
        page = tmp / "all.html"
        out_all, html_s = cli_run("--html", str(page))
        one = tmp / "one.html"
        _, one_s = cli_run("--study", f"study_{min(3, a.studies - 1)}", "--html", str(one))
        one_name = f"study_{min(3, a.studies - 1)}"
        copies = {}
        for copy_trials in (False, True, False):
            copies.setdefault(copy_trials, []).append(page_in_process(r.endpoint, one_name, copy_trials))
        body = page.read_text()
        assert "<script src=" not in body and body.count("Plotly.newPlot(") == 3 * a.studies, "3 figures a study"
        # plotly's JS: the one <script> block holding the library (its header comment names it)
        js = next(s for s in re.findall(r"<script[^>]*>(.*?)</script>", body, re.S) if "* plotly.js v" in s)
        out = {"studies": a.studies, "trials_per_study": a.trials,
               "text_report_cli_s": round(text_s, 2), "html_report_cli_s": round(html_s, 2),
               "html_over_text_ratio": round(html_s / text_s, 1),
               "html_bytes": page.stat().st_size, "plotly_js_bytes": len(js.encode()),
               "data_bytes": page.stat().st_size - len(js.encode()),
               "one_study_html_cli_s": round(one_s, 2), "one_study_html_bytes": one.stat().st_size,
               "one_study_page_in_process_s": min(copies[False]),
               "one_study_page_in_process_deepcopy_s": copies[True][0],
               "no_copies_speedup": round(copies[True][0] / min(copies[False]), 1),
               "cli_line": out_all.splitlines()[-1],
               "load_average": [round(x, 1) for x in os.getloadavg()]}
        print(json.dumps(out, indent=2))
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    finally:
        r.stop()


if __name__ == "__main__":
    main()
