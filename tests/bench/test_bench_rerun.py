"""bin/bench-rerun on real ansible-playbook runs against localhost (no nodes):
it lists each task with its time, and refuses a run that changes something."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = """\
- name: Bench target
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Take a second
      ansible.builtin.command: sleep 1
      changed_when: {changed}
    - name: Say hello
      ansible.builtin.debug:
        msg: hello
"""


def bench(tmp_path: Path, changed: bool) -> subprocess.CompletedProcess:
    playbook = tmp_path / "bench.yml"
    playbook.write_text(PLAYBOOK.format(changed=str(changed).lower()))
    return subprocess.run(
        [sys.executable, str(ROOT / "bin" / "bench-rerun"), "--runs", "1", str(playbook), "--",
         "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_a_warm_run_lists_every_task_with_its_time(tmp_path):
    done = bench(tmp_path, changed=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "changed {'localhost': 0}" in done.stdout
    figures = json.loads((ROOT / ".cache" / "bench-rerun.json").read_text())
    tasks = {name.split(": ", 1)[-1]: seconds for name, seconds in figures["tasks"].items()}
    assert set(tasks) == {"Take a second", "Say hello"}
    assert tasks["Take a second"] >= 1.0
    assert tasks["Take a second"] > tasks["Say hello"]
    assert "Take a second" in done.stdout.splitlines()[1]  # the slowest first


def test_a_run_that_changes_something_fails(tmp_path):
    done = bench(tmp_path, changed=True)
    assert done.returncode == 1
    assert "a warm run must change at most 0" in done.stderr


def test_against_full_times_the_full_runs_and_the_fast_path_side_by_side(tmp_path):
    playbook = tmp_path / "bench.yml"
    # A stand-in for the roles: the full run (converged_fast_path false) does a second's work.
    playbook.write_text("""\
- name: Bench target
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Work only a full run does
      ansible.builtin.command: sleep 1
      changed_when: false
      when: not (converged_fast_path | default(true) | bool)
""")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bin" / "bench-rerun"), "--runs", "1", "--against-full", str(playbook),
         "--", "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "run 1 (full)" in done.stdout and "run 2 (fast)" in done.stdout
    assert "median of 1: full runs" in done.stdout
    walls = json.loads((ROOT / ".cache" / "bench-rerun.json").read_text())["walls_s"]
    assert len(walls["full"]) == len(walls["fast"]) == 1
    assert walls["full"][0] >= walls["fast"][0] + 0.5, walls
