"""Fast re-runs (roles/converged) on the cluster that site.yml converged.

The scenario's inventory turns the fast path off (converge and the re-run
below take every role's full run); these tests turn it on with
-e converged_fast_path=true, as a user's run has it by default. They run
first, right after the converge (conftest.py): the first run here is the
scenario's idempotence check (molecule.yml has no idempotence step), and
the nodes are left as these tests found them.

Figures (seconds of a warm site.yml run, full and fast, and their ratio)
go to .cache/rerun-figures.json in the project directory.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))
from verify_helpers import RUNNER, ansible_playbook, changed_tasks, node, recap, recorder  # noqa: E402

NODES = sorted(RUNNER.get_hosts("all"))
HEAD = RUNNER.get_hosts("ray_head")[0]
STAMPS = "/var/lib/hpo-cluster/converged"
FAST = ("-e", "converged_fast_path=true")
record = recorder("rerun-figures.json")


def stamps(name: str) -> dict[str, str]:
    """Each stamp of NAME -> its modification time (a full run rewrites it)."""
    out = node(name).check_output(f"stat -c '%n %.9Y' {STAMPS}/*.json")
    return {Path(line.split()[0]).stem: line.split()[1] for line in out.splitlines()}


def site(*args: str) -> tuple[float, dict, str]:
    started = time.monotonic()
    run = ansible_playbook("../site.yml", *args, timeout=1200)
    took = round(time.monotonic() - started, 1)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return took, recap(run.stdout), run.stdout


def expected_stamps(name: str) -> set[str]:
    groups = set(node(name).ansible.get_variables()["group_names"])
    wanted = {"firewall", "ray"} if groups & {"ray_head", "ray_workers", "keydb"} else set()
    if "keydb" in groups:
        wanted.add("keydb")
    if "optuna_workers" in groups:
        wanted.add("optuna_worker")
    if "ray_head" in groups:
        wanted.add("optuna_dashboard")
    return wanted


def test_a_warm_rerun_ends_every_role_at_its_check_and_changes_nothing():
    # The idempotence check: the inventory's converged_fast_path: false, every role's
    # full run, on the cluster as the converge left it; no task may change anything.
    full_s, hosts, output = site()
    assert {h: r["changed"] for h, r in hosts.items()} == {n: 0 for n in NODES}, changed_tasks(output)
    before = {n: stamps(n) for n in NODES}
    for name in NODES:
        assert set(before[name]) == expected_stamps(name), name

    fast_s, hosts, _ = site(*FAST)
    assert {h: r["changed"] for h, r in hosts.items()} == {n: 0 for n in NODES}
    # No role went past its check: a full run would have rewritten its stamp.
    assert {n: stamps(n) for n in NODES} == before
    record(**{"warm site.yml, every role's full run (s)": full_s,
              "warm site.yml, fast path (s)": fast_s,
              "fast / full": round(fast_s / full_s, 2)})
    assert fast_s < 0.75 * full_s, f"the fast path took {fast_s} s against {full_s} s for the full runs"


def test_a_hand_edit_or_a_stopped_unit_sends_that_role_alone_through_its_full_run():
    edited, other = NODES[1], NODES[2]
    probe = "/opt/ray/ray_health.py"
    original = node(other).check_output(f"sha256sum {probe}").split()[0]
    node(edited).check_output(f"echo '# edited by hand' >> {probe}")
    node(HEAD).check_output("systemctl stop hpo-dashboard")
    before = {n: stamps(n) for n in NODES}

    _, hosts, _ = site(*FAST)
    assert node(edited).check_output(f"sha256sum {probe}").split()[0] == original
    assert node(HEAD).check_output("systemctl is-active hpo-dashboard") == "active"
    assert hosts[edited]["changed"] > 0 and hosts[HEAD]["changed"] > 0
    assert hosts[other]["changed"] == 0
    after = {n: stamps(n) for n in NODES}
    rewritten = {n: sorted(k for k in after[n] if after[n][k] != before[n][k]) for n in NODES}
    assert rewritten == {HEAD: ["optuna_dashboard"], edited: ["ray"], other: []}, rewritten
