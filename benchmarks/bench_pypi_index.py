"""The test bed's PyPI proxy with its index pages kept (testbed/pypi_cache.py,
--index-ttl 3600, the default) against the same proxy fetching every index page
from PyPI (--index-ttl 0, as it did before), measured in one run.

Each run is what a node's `pip install` asks of the proxy: `pip install --dry-run
--no-cache-dir PACKAGES` (resolve: every index page and every wheel's metadata)
in a fresh virtualenv pointed at one of the two proxies. Both proxies share one
files directory, filled by a first, unmeasured run, so the two differ only in the
index pages. Runs alternate (kept, fetched, kept, ...); medians and their ratio go
to stdout and to --json.

    python3 benchmarks/bench_pypi_index.py [--runs 3] [--json benchmarks/results/pypi-index.json]
        [PACKAGE ...]          (default: ray[default]==2.60.0, what every Ray node installs)

Needs PyPI (the machines' registries), nothing else: no test-bed node.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from testbed.pypi_cache import INDEX_TTL  # noqa: E402

PORTS = {"kept": 3161, "fetched": 3162}
TTL = {"kept": INDEX_TTL, "fetched": 0}


def start_proxy(kind: str, cache: Path, log: Path) -> subprocess.Popen:
    proxy = subprocess.Popen(
        [sys.executable, "-m", "testbed.pypi_cache", "--listen", "127.0.0.1", "--port", str(PORTS[kind]),
         "--cache", str(cache), "--index-ttl", str(TTL[kind])],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))  # noqa: SIM115  the child's log
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORTS[kind]}/nothing", timeout=2)
        except urllib.error.HTTPError:
            return proxy  # it answers (404)
        except OSError:
            time.sleep(0.2)
    proxy.kill()
    raise SystemExit(f"the {kind} proxy did not start; see {log}")


def resolve(venv: Path, kind: str, packages: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--dry-run", "--no-cache-dir", "--disable-pip-version-check",
         "--index-url", f"http://127.0.0.1:{PORTS[kind]}/simple/", *packages],
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull}, check=True, timeout=900)
    return round(time.monotonic() - started, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("packages", nargs="*", default=["ray[default]==2.60.0"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pypi-index-") as tmp:
        work = Path(tmp)
        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        proxies = [start_proxy(kind, work / "cache", work / f"{kind}.log") for kind in PORTS]
        try:
            print("filling the files cache (not measured) ...", flush=True)
            resolve(venv, "kept", args.packages)
            times: dict[str, list[float]] = {kind: [] for kind in PORTS}
            for run in range(args.runs):
                for kind in PORTS:
                    times[kind].append(resolve(venv, kind, args.packages))
                    print(f"run {run + 1}: index pages {kind}: {times[kind][-1]} s", flush=True)
        finally:
            for proxy in proxies:
                proxy.terminate()
                proxy.wait(timeout=10)
            shutil.rmtree(work / "cache", ignore_errors=True)
    medians = {kind: round(statistics.median(values), 2) for kind, values in times.items()}
    result = {
        "what": f"pip install --dry-run --no-cache-dir {' '.join(args.packages)} through testbed/pypi_cache.py, "
                f"index pages kept (--index-ttl {INDEX_TTL:.0f}) against fetched each time (--index-ttl 0), "
                "runs alternating",
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": os.getloadavg()[0],
        "seconds": times,
        "median_s": medians,
        "kept / fetched": round(medians["kept"] / medians["fetched"], 2),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
