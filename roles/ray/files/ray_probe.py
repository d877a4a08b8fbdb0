#!/usr/bin/env python3
"""Report the Python and Ray that a Ray node runs (or will run) as JSON.

Usage: ray_probe.py VENV_DIR

Run with the interpreter the virtualenv is (or will be) created from. When
VENV_DIR/bin/python exists, the versions are read from it; otherwise from
the interpreter running this script, and Ray is reported as not installed.
Also counts the GPUs that nvidia-smi lists (0 when it is absent). Read-only.
"""

import json
import os
import shutil
import subprocess
import sys

READ_VERSIONS = (
    "import json, sys\n"
    "try:\n"
    "    from importlib.metadata import version, PackageNotFoundError\n"
    "    try:\n"
    "        ray = version('ray')\n"
    "    except PackageNotFoundError:\n"
    "        ray = None\n"
    "except ImportError:\n"
    "    ray = None\n"
    "print(json.dumps({'python': '.'.join(map(str, sys.version_info[:3])), 'ray': ray}))\n"
)


def read_versions(venv: str) -> dict:
    venv_python = os.path.join(venv, "bin", "python")
    if os.access(venv_python, os.X_OK):
        done = subprocess.run(
            [venv_python, "-c", READ_VERSIONS],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if done.returncode == 0:
            found = json.loads(done.stdout)
            found.update(python_path=venv_python, venv=True, venv_error=None)
            return found
        venv_error = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    else:
        venv_error = None
    return {
        "python": ".".join(str(part) for part in sys.version_info[:3]),
        "ray": None,
        "python_path": sys.executable,
        "venv": False,
        "venv_error": venv_error,
    }


def count_gpus() -> dict:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"gpus": 0, "gpu_source": "nvidia-smi not found"}
    try:
        done = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"gpus": 0, "gpu_source": f"nvidia-smi failed: {exc}"}
    if done.returncode != 0:
        return {"gpus": 0, "gpu_source": f"nvidia-smi -L exited {done.returncode}"}
    gpus = sum(1 for line in done.stdout.splitlines() if line.startswith("GPU "))
    return {"gpus": gpus, "gpu_source": "nvidia-smi -L"}


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    report = read_versions(sys.argv[1])
    report.update(count_gpus())
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
