"""playbooks/report.yml -e report_html=PATH: the real playbook against a local connection and a
real redis-server on loopback holding a study run by the real worker (with worker.memray):
it prints the text report, writes the HTML report on the host, fetches it to PATH (relative
to the directory ansible-playbook runs in) and removes the host's copy."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PASSWORD = "report-pw-K2"


@pytest.fixture
def store():
    """A real redis-server on a free loopback port, with a password."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    p = subprocess.Popen([server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                          "--requirepass", PASSWORD], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    p.terminate()
    p.wait(10)


def test_report_playbook_fetches_the_html_report(tmp_path, store):
    spec = {"name": "rep", "sampler": {"type": "random", "seed": 3},
            "space": {"mib": {"type": "int", "low": 1, "high": 4}}, "budget": {"n_trials": 4},
            "objective": "objectives:hold_memory", "worker": {"memray": True, "heartbeat_interval": 0.5}}
    (tmp_path / "rep.yaml").write_text(yaml.safe_dump(spec))
    env = dict(os.environ, HPO_KEYDB_PASSWORD=PASSWORD, HPO_STATE_DIR=str(tmp_path / "state"),
               HPO_CACHE_DIR=str(tmp_path / "cache"))
    run = subprocess.run([str(BIN / "hpo-worker"), "run", str(tmp_path / "rep.yaml"), "--endpoints", store,
                          "--code-dir", str(REPO / "worker" / "tests"), "--host-label", "node-a"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr

    (tmp_path / "inventory.yml").write_text(yaml.safe_dump({"all": {"children": {"optuna_workers": {"hosts": {
        "box-a": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}}}))
    extra = {"optuna_worker_venv": str(BIN.parent), "optuna_worker_keydb_endpoints": [store],
             "optuna_worker_keydb_username": "", "optuna_worker_keydb_password": PASSWORD,
             "report_html": "out/report.html", "ansible_become": False}
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    pb_env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_ROLES_PATH=str(REPO / "roles"),
                  ANSIBLE_NOCOLOR="1", HPO_CACHE_DIR=str(tmp_path / "cache"), PWD=str(work))
    pb = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp_path / "inventory.yml"),
                         str(REPO / "playbooks" / "report.yml"), "-e", json.dumps(extra)],
                        cwd=work, env=pb_env, capture_output=True, text=True, timeout=300)
    assert pb.returncode == 0, pb.stdout + pb.stderr
    assert re.search(r'"node-a:\s+[\d.]+\s+[\d.]+\s+\d+\s+[\d.]+\s+[\d.]+"', pb.stdout), pb.stdout  # host, peaks
    fetched = work / "out" / "report.html"
    page = fetched.read_text()
    assert 'data-study="rep"' in page and "<th>peak MiB max</th>" in page and "<td>node-a</td>" in page
    assert f"HTML report of every study: {fetched} (on the controller)" in pb.stdout
    on_host = re.search(r"html report: (\S+) \(", pb.stdout)[1]
    assert not Path(on_host).parent.exists()  # the host's temporary directory is gone
