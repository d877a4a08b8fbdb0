"""Helpers for the keydb role checks that need no test-bed node.

The role's own task files and templates run here through the real
ansible-playbook, against this machine (connection local); nothing is
mocked. Files the role would write under /etc are redirected into a
temporary directory by overriding the role's internal path variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "keydb"
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")


@dataclass
class PlaybookRun:
    rc: int
    output: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def changed(self) -> int:
        """Sum of changed=N over the recap lines."""
        total = 0
        for line in self.output.splitlines():
            if "changed=" in line and "ok=" in line:
                total += int(line.split("changed=")[1].split()[0])
        return total


class Ansible:
    """Writes an inventory and a playbook into tmp_path and runs them."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path

    def inventory(self, hosts: dict[str, dict], group: str = "keydb") -> Path:
        local = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
        }
        data = {
            "all": {
                "vars": local,
                "children": {group: {"hosts": hosts}},
            }
        }
        path = self.dir / "inventory.yml"
        path.write_text(yaml.safe_dump(data))
        return path

    def _config(self) -> Path:
        # An ansible.cfg of our own, so that no other configuration applies.
        path = self.dir / "ansible.cfg"
        path.write_text("[defaults]\nstdout_callback = default\n")
        return path

    def run(self, plays: list[dict], inventory: Path, extra_vars: dict | None = None) -> PlaybookRun:
        playbook = self.dir / "play.yml"
        playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
        argv = [ANSIBLE_PLAYBOOK, "-i", str(inventory), str(playbook)]
        if extra_vars:
            ev = self.dir / "extra_vars.json"
            ev.write_text(json.dumps(extra_vars))
            argv += ["-e", f"@{ev}"]
        env = dict(os.environ)
        env.update(
            ANSIBLE_ROLES_PATH=str(REPO / "roles"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_RETRY_FILES_ENABLED="0",
            ANSIBLE_LOCAL_TEMP=str(self.dir / "ansible-tmp"),
            ANSIBLE_CONFIG=str(self._config()),
        )
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        return PlaybookRun(proc.returncode, proc.stdout + proc.stderr)


def role_play(tasks_from: str, hosts: str = "keydb", gather_facts: bool = False,
              pre_tasks: list | None = None) -> dict:
    """A play that runs one task file of the keydb role."""
    return {
        "name": f"keydb role: {tasks_from}",
        "hosts": hosts,
        "gather_facts": gather_facts,
        "pre_tasks": pre_tasks or [],
        "tasks": [
            {
                "name": f"Run {tasks_from}",
                "ansible.builtin.include_role": {"name": "keydb", "tasks_from": tasks_from},
            }
        ],
    }
