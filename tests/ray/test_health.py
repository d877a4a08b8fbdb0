"""Node-free parts of the self-healing (docs/ray.md, "When Ray dies"): the
health check's argument handling and process walk, run on this machine's
real /proc, and the Optuna worker unit's independence from ray.service. The
faults themselves are injected on real nodes by molecule/ray."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "ray" / "files" / "ray_health.py"


def load():
    spec = importlib.util.spec_from_file_location("ray_health", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_process_walk_finds_the_children_of_a_process():
    health = load()
    child = subprocess.Popen(["sleep", "30"])
    try:
        names = health.process_names(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert "sleep" in names
    assert Path(f"/proc/{os.getpid()}/comm").read_text().strip() in names


def test_process_walk_of_a_missing_process_is_empty():
    assert load().process_names(0) == set()


def test_bad_arguments_exit_2_with_the_usage():
    done = subprocess.run([sys.executable, str(SCRIPT), "ray.service", "leader", "a:1", "b"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "Usage:" in done.stderr


ACTIVE = {"LoadState": "loaded", "ActiveState": "active", "SubState": "running", "MainPID": "100"}


def worker_check(monkeypatch, *unit_reads):
    """diagnose() of ray-3 (198.18.1.13) with systemd and the GCS stood in:
    neither runs on this controller. The unit reads UNIT_READS in turn, its
    processes include a raylet, and the GCS lists only the head as alive."""
    health = load()
    reads = iter(unit_reads)
    monkeypatch.setattr(health, "unit_state", lambda unit: dict(next(reads)))
    monkeypatch.setattr(health, "process_names", lambda pid: {"ray", "raylet"})
    monkeypatch.setattr(health, "gcs_port_open", lambda address: True)
    monkeypatch.setattr(health, "alive_node_ips", lambda address: ["198.18.1.11"])
    return health.diagnose("ray.service", "worker", "198.18.1.11:6333", "198.18.1.13")


def test_a_restart_that_begins_during_the_check_is_not_healed(monkeypatch):
    # On real nodes molecule/ray's
    # test_the_health_check_sees_every_healthy_node_alive_and_restarts_nothing
    # covers it: a playbook restarting ray-3 while its timer's check ran.
    stopping = {**ACTIVE, "ActiveState": "deactivating", "SubState": "stop-sigterm"}
    state, reason = worker_check(monkeypatch, ACTIVE, stopping)
    assert state == "idle" and "went deactivating" in reason, reason


def test_a_node_missing_from_the_gcs_while_its_unit_stays_up_is_broken(monkeypatch):
    state, reason = worker_check(monkeypatch, ACTIVE, ACTIVE)
    assert state == "broken" and "does not list 198.18.1.13" in reason, reason


def test_the_optuna_worker_unit_does_not_depend_on_ray():
    unit = (ROOT / "roles" / "optuna_worker" / "templates" / "hpo-worker@.service.j2").read_text()
    tying = re.findall(r"^(?:Requires|BindsTo|PartOf|Requisite)=.*ray.*$", unit, re.M)
    assert tying == [], tying


def load_alive_probe():
    path = ROOT / "roles" / "ray" / "files" / "ray_node_alive.py"
    spec = importlib.util.spec_from_file_location("ray_node_alive", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_join_probe_gives_up_when_ray_start_has_ended(monkeypatch):
    probe = load_alive_probe()
    monkeypatch.delenv("MAINPID", raising=False)
    assert probe.main_process_gone() is False  # not run by systemd: keep waiting
    monkeypatch.setenv("MAINPID", str(os.getpid()))
    assert probe.main_process_gone() is False
    ended = subprocess.Popen(["true"])
    ended.wait()
    monkeypatch.setenv("MAINPID", str(ended.pid))
    assert probe.main_process_gone() is True
