"""Verifier of the ray-preflight scenario.

pf-head runs a one-node Ray cluster (bookworm, Python 3.11); pf-trixie is a
trixie machine (Python 3.13) with no Ray. Every ansible-playbook run below
must stop in the preflight with its message, naming the host and the
variable, and change nothing: the head's Ray service keeps its PID and start
time, pf-trixie gets no user, virtualenv or unit, and no host reports a
change.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import testinfra
import yaml

SCENARIO = Path(__file__).resolve().parent.parent
# Molecule asks for coloured output; the recap is parsed, so turn it off.
PLAIN_OUTPUT = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CASES = SCENARIO / "cases"
PROJECT = SCENARIO.parent.parent
MOLECULE_INVENTORY = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
# Addresses and SSH settings only (copied there by molecule/_shared/create.yml).
TESTBED_INVENTORY = MOLECULE_INVENTORY / "testbed.yml"


def node(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={MOLECULE_INVENTORY}")


def unit_identity(name: str) -> str:
    return node(name).check_output(
        "systemctl show ray -p MainPID -p ExecMainStartTimestampMonotonic -p NRestarts")


def case_inventory(case: str, tmp_dir: Path) -> Path:
    """The case's layout, with HEAD_ADDRESS replaced by pf-head's address."""
    head = yaml.safe_load(TESTBED_INVENTORY.read_text())["all"]["children"]["testbed_nodes"]["hosts"]["pf-head"]
    target = tmp_dir / f"{case}.yml"
    target.write_text((CASES / f"{case}.yml").read_text().replace("HEAD_ADDRESS", head["cluster_address"]))
    return target


def run_ray_playbook(case: str, *extra: str) -> str:
    playbook = Path(sys.executable).with_name("ansible-playbook")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [str(playbook), "-i", str(TESTBED_INVENTORY), "-i", str(case_inventory(case, Path(tmp))),
             *extra, str(PROJECT / "playbooks" / "ray.yml")],
            cwd=PROJECT, env=PLAIN_OUTPUT, capture_output=True, text=True, timeout=600, check=False,
        )
    output = ANSI.sub("", done.stdout + done.stderr)
    assert done.returncode != 0, f"ray.yml passed with the {case} inventory:\n{output[-4000:]}"
    return output


def recap(output: str) -> dict[str, int]:
    rows = re.findall(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", output, re.M)
    return {host: int(changed) for host, changed in rows}


@pytest.fixture(scope="module")
def head_before() -> str:
    ident = unit_identity("pf-head")
    assert "MainPID=0" not in ident, "the head's Ray service should be running"
    return ident


def assert_nothing_changed(output: str, head_before: str) -> None:
    assert recap(output), output[-2000:]
    assert all(c == 0 for c in recap(output).values()), recap(output)
    # Nothing of the install/service part of the ray role ran.
    assert "Install the packages the Ray virtualenv needs" not in output
    assert "Write the Ray unit" not in output
    assert unit_identity("pf-head") == head_before
    trixie = node("pf-trixie")
    assert not trixie.file("/opt/ray").exists
    assert not trixie.file("/etc/systemd/system/ray.service").exists
    assert not trixie.user("ray").exists


def test_the_nodes_really_differ_in_python():
    head = node("pf-head").check_output("/opt/ray/venv/bin/python -V")
    trixie = node("pf-trixie").check_output("/usr/bin/python3 -V")
    assert head.startswith("Python 3.11.") and trixie.startswith("Python 3.13."), (head, trixie)


def table_row(output: str, host: str) -> str:
    rows = [line for line in output.splitlines() if re.match(rf"^\s*{re.escape(host)}\s+\|", line)]
    assert rows, f"no table row for {host} in:\n{output[-3000:]}"
    return rows[-1]


def test_version_mismatch_stops_with_a_table(head_before):
    output = run_ray_playbook("mismatch")
    assert re.search(r"host\s+\|\s+Ray\s+\|\s+Python\s+\|\s+differs from the head", output)
    head_py = node("pf-head").check_output(
        "/opt/ray/venv/bin/python -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])'")
    trixie_row = table_row(output, "pf-trixie")
    assert "not installed - will install 2.60.0" in trixie_row
    assert re.search(rf"Python 3\.13\.\d+ != {re.escape(head_py)}", trixie_row), trixie_row
    assert "(head)" in table_row(output, "pf-head")
    assert_nothing_changed(output, head_before)


def test_mismatch_is_caught_when_limit_leaves_the_head_out(head_before):
    output = run_ray_playbook("mismatch", "--limit", "pf-trixie")
    assert "(not in this run)" in table_row(output, "pf-head")
    assert re.search(r"Python 3\.13\.\d+ != 3\.11\.\d+", table_row(output, "pf-trixie"))
    assert_nothing_changed(output, head_before)


def test_a_ray_version_difference_is_named_too(head_before):
    output = run_ray_playbook("ray-version", "--limit", "pf-trixie")
    row = table_row(output, "pf-trixie")
    assert "not installed - will install 2.59.0" in row
    assert "Ray 2.59.0 != 2.60.0" in row and re.search(r"Python 3\.13\.\d+ != 3\.11\.\d+", row)
    assert_nothing_changed(output, head_before)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("duplicate-ip", r"pf-trixie: ray_node_ip 198\.1[89]\.\d+\.\d+ is also the node IP of pf-head"),
        ("foreign-ip", r"pf-head: ray_node_ip 198\.19\.255\.254 is not an address of this host"),
        ("two-heads", r"group ray_head must hold exactly one host; it holds pf-head, pf-trixie"),
        ("no-head", r"group ray_head must hold exactly one host; it holds no host"),
        ("too-many-gpus", r"pf-head: ray_num_gpus is 1 but this host has 0 GPU\(s\)"),
    ],
)
def test_bad_inventory_fails_before_any_change(case, message, head_before):
    output = run_ray_playbook(case)
    assert re.search(message, output), f"{case}: expected /{message}/ in:\n{output[-3000:]}"
    assert_nothing_changed(output, head_before)
