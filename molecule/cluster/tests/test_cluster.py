"""Verifier of the cluster scenario: the product working on three nodes.

Everything here acts on the real cluster that site.yml converged: real
systemd units, real worker processes, the real store (KeyDB 6.3.4 from its
own packages, two active multi-master replicas), read back with the worker's public
read-only `hpo-worker trials --json` (helpers: molecule/_shared/verify_helpers.py).
The tests run in file order: the stop test leaves cluster-2's worker running
again before the kill test starts. test_security.py and test_keydb_chaos.py run after this file and
test_lifecycle.py (token rotation, then the removal of a node) last (conftest.py).

Figures (stop time, trials left RUNNING, reaping time) are printed and
written to .cache/cluster-figures.json in the project directory.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))
from verify_helpers import RUNNER, VENV, node, recorder, wait_for, with_store_env  # noqa: E402
from verify_helpers import trials as study_trials  # noqa: E402

NODES = sorted(RUNNER.get_hosts("optuna_workers"))
record = recorder("cluster-figures.json")

SLOW = "slow"
DIGITS = "digits-svc"
# slow study: heartbeat_ttl 5 s, heartbeat_interval 1 s, each trial sleeps 4 s.
# A dead worker's trial is reaped by another worker at its next reaping pass
# once the heartbeat key expired: ttl + interval + one trial in flight there.
REAP_GRACE = 5 + 1 + 4


def trials(study: str) -> list[dict]:
    return study_trials(NODES[0], study)


def report(study: str) -> str:
    result = node(NODES[0]).run(with_store_env(f"{VENV}/bin/hpo-worker report --study {study}"))
    assert result.rc == 0, result.stderr
    return result.stdout


def report_hosts(text: str) -> dict[str, int]:
    rows = re.findall(r"^(\S+):\s+[\d.]+\s+[\d.]+\s+(\d+)\s*$", text, flags=re.MULTILINE)
    return {host: int(count) for host, count in rows}


def unit(host, study: str) -> dict[str, str]:
    out = host.check_output(
        f"systemctl show hpo-worker@{study}.service -p ActiveState,SubState,Result,ExecMainCode,"
        "ExecMainStatus,MainPID,NRestarts,TimeoutStopUSec"
    )
    return dict(line.split("=", 1) for line in out.splitlines())


def running_trial_of(host_name: str) -> dict | None:
    for t in trials(SLOW):
        if t["state"] == "RUNNING" and t["host"] == host_name:
            return t
    return None


def test_three_worker_nodes() -> None:
    assert NODES == ["cluster-1", "cluster-2", "cluster-3"]


def test_digits_study_ran_to_its_budget_across_the_cluster() -> None:
    def finished() -> bool:
        return all(unit(node(n), DIGITS)["SubState"] == "exited" for n in NODES)

    wait_for("every digits-svc worker to reach the budget and exit", finished, timeout=300, interval=3)
    for name in NODES:
        props = unit(node(name), DIGITS)
        # Budget reached: exit 0; the unit stays active (exited) until stopped.
        assert (props["ActiveState"], props["Result"], props["ExecMainStatus"]) == ("active", "success", "0"), props
    text = report(DIGITS)
    print(text)
    complete = int(re.search(r"COMPLETE: (\d+)", text).group(1))
    assert complete >= 60, text
    assert "RUNNING 0" in text, text
    assert not any(t["state"] == "RUNNING" for t in trials(DIGITS))


def test_report_shows_trials_from_every_host() -> None:
    def all_hosts() -> dict[str, int] | None:
        hosts = report_hosts(report(SLOW))
        return hosts if set(hosts) == set(NODES) else None

    hosts = wait_for("trials of the slow study from every node", all_hosts, timeout=120, interval=3)
    assert all(count > 0 for count in hosts.values()), hosts


def test_systemctl_stop_ends_the_trial_cleanly() -> None:
    name = "cluster-2"
    host = node(name)
    in_flight = wait_for(f"a RUNNING trial on {name}", lambda: running_trial_of(name), timeout=60)

    start = time.monotonic()
    host.run_test(f"systemctl stop hpo-worker@{SLOW}.service")
    stop_seconds = time.monotonic() - start

    props = unit(host, SLOW)
    timeout_stop = props["TimeoutStopUSec"]
    assert props["ActiveState"] == "inactive", props
    # Result=success alone would also hold for a process killed by SIGTERM
    # (systemd counts that as clean); the worker must have *exited* with 0.
    assert props["Result"] == "success", props
    assert props["ExecMainCode"] == "1", f"main process did not exit by itself (1 = exited): {props}"
    assert props["ExecMainStatus"] == "0", props
    assert stop_seconds < 60, f"stop took {stop_seconds:.1f}s (TimeoutStopSec {timeout_stop})"

    # The trial seen in flight may have finished just before the stop; the
    # one in flight at the stop is then a later trial of the same host.
    after = [t for t in trials(SLOW) if t["host"] == name and t["number"] >= in_flight["number"]]
    every = trials(SLOW)
    left_running = [t for t in after if t["state"] == "RUNNING"]
    requeued_from = {t["requeued_from"]: t["requeue_reason"] for t in every if t["requeued_from"] is not None}
    ended = [t for t in after if t["state"] == "FAIL"]
    record(stop_seconds=round(stop_seconds, 2), running_after_stop=len(left_running),
           timeout_stop=timeout_stop)
    assert left_running == [], left_running
    assert ended, f"no trial of {name} was ended by the stop: {after}"
    for t in ended:
        assert requeued_from.get(t["number"]) == "SIGTERM", (t, requeued_from)

    host.run_test(f"systemctl start hpo-worker@{SLOW}.service")
    assert unit(host, SLOW)["SubState"] == "running"


def test_kill_9_trial_is_reaped_and_requeued() -> None:
    name = "cluster-3"
    host = node(name)
    wait_for(f"a RUNNING trial on {name}", lambda: running_trial_of(name), timeout=60)
    before = unit(host, SLOW)
    pid = int(before["MainPID"])
    host.run_test(f"kill -9 {pid}")
    killed_at = time.monotonic()

    # processes: 1 for this study, so the unit's main process is the worker;
    # its last trial (the one in flight at the kill) stays RUNNING until
    # another worker sees its heartbeat expired and reaps it.
    def reaped() -> list[dict] | None:
        every = trials(SLOW)
        last = max((t for t in every if t["host"] == name and t["pid"] == pid), key=lambda t: t["number"])
        again = [t for t in every if t["requeued_from"] == last["number"]]
        return [last, *again] if last["state"] == "FAIL" and again else None

    victim, *again = wait_for(f"the trial of killed pid {pid} to be reaped", reaped, timeout=120, interval=0.5)
    reap_seconds = time.monotonic() - killed_at
    record(reap_seconds=round(reap_seconds, 2), reap_grace=REAP_GRACE)
    assert again[0]["requeue_reason"] == "heartbeat expired", (victim, again)
    # Polling adds a few seconds on top (each probe is an SSH round trip).
    assert reap_seconds < REAP_GRACE + 15, f"reaped after {reap_seconds:.1f}s, grace {REAP_GRACE}s"

    # systemd saw a failure (SIGKILL) and restarted the worker.
    def restarted() -> dict | None:
        props = unit(host, SLOW)
        return props if props["SubState"] == "running" and int(props["NRestarts"]) > int(before["NRestarts"]) else None

    wait_for(f"systemd to restart the killed worker on {name}", restarted, timeout=60)


def test_memray_records_each_trials_peak_memory() -> None:
    """The mem study (worker.memray, memray_keep 3): every trial holds 32 MiB;
    the peak memray recorded is that, plus at most 2 MiB of everything else
    the objective allocated; the report has the peak columns; the role
    installed memray on every node; a node keeps at most 3 capture files."""
    mib, held, tolerance = 2**20, 32 * 2**20, 2 * 2**20

    def finished() -> list[dict] | None:
        every = trials("mem")
        return every if sum(t["state"] == "COMPLETE" for t in every) >= 12 else None

    done = [t for t in wait_for("the mem study to reach its budget", finished, timeout=300, interval=3)
            if t["state"] == "COMPLETE"]
    peaks = {t["number"]: t["hpo"].get("peak_memory_bytes") for t in done}
    record(memray_peak_mib={str(n): round(p / mib, 2) for n, p in peaks.items() if p is not None})
    assert all(isinstance(p, int) and held <= p <= held + tolerance for p in peaks.values()), peaks
    assert "peak MiB max" in report("mem")
    ran = {t["host"] for t in done}
    for name in NODES:
        host = node(name)
        assert host.run(f"{VENV}/bin/python -c 'import memray'").rc == 0, f"{name}: memray not installed"
        kept = int(host.check_output("find /var/lib/hpo-worker/memray/mem -name '*.bin' 2>/dev/null | wc -l"))
        assert (1 if name in ran else 0) <= kept <= 3, f"{name}: {kept} capture files"
