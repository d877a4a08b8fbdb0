"""The test bed itself, on real nodes: idempotent up, cleanup after a killed up,
a node from another Debian release, and clear errors for bad input.

Needs root, systemd-nspawn and debootstrap (bin/setup installs them). The
clusters are named tbtest-*; each test removes its own.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.testbed

REPO = Path(__file__).resolve().parents[2]
TESTBED = str(REPO / "bin" / "testbed")
STATE = Path(os.environ.get("HPO_TESTBED_STATE", "/var/lib/hpo-testbed"))


def run_testbed(*args: str, check: bool = True, env: dict | None = None, timeout: float = 600):
    proc = subprocess.run(
        [TESTBED, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and proc.returncode != 0:
        pytest.fail(f"bin/testbed {' '.join(args)} failed ({proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr}")
    return proc


def on_node(cluster: str, node: str, command: str) -> str:
    proc = run_testbed("--cluster", cluster, "ssh", node, command, check=False)
    if proc.returncode != 0:
        state = run_testbed("status", "--check-clean", "--only", cluster, check=False).stdout
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        pytest.fail(f"{node}: '{command}' failed ({proc.returncode}): {proc.stderr}\n"
                    f"test bed status:\n{state}\nhost links:\n{links}")
    return proc.stdout.strip()


def processes() -> list[tuple[int, str]]:
    """(pid, command line) of every process that is still there when read."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            found.append((int(entry.name), argv))
    return found


def assert_running(cluster: str, node: str) -> None:
    """systemd in the node says 'running'; otherwise show why (failed units, errors)."""
    state = run_testbed("--cluster", cluster, "ssh", node, "systemctl is-system-running",
                        check=False).stdout.strip()
    if state != "running":
        why = run_testbed("--cluster", cluster, "ssh", node,
                          "systemctl --failed --no-pager; journalctl -b -p warning --no-pager | tail -40",
                          check=False).stdout
        pytest.fail(f"{node}: systemd is {state!r}\n{why}")


def assert_nothing_left(cluster: str) -> None:
    proc = run_testbed("status", "--check-clean", "--only", cluster, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (STATE / "clusters" / cluster).exists()
    assert not (REPO / "inventory" / "testbed" / "generated" / f"{cluster}.yml").exists()


@pytest.fixture
def cluster(request):
    name = request.param
    run_testbed("--cluster", name, "down")
    yield name
    run_testbed("--cluster", name, "down")
    assert_nothing_left(name)


@pytest.mark.parametrize("cluster", ["tbtest-idem"], indirect=True)
def test_up_twice_is_harmless(cluster):
    first = run_testbed("--cluster", cluster, "up", "2")
    inventory = Path(first.stdout.strip().splitlines()[-1])
    before = inventory.read_text()
    ids = {n: on_node(cluster, n, "cat /etc/machine-id") for n in (f"{cluster}-1", f"{cluster}-2")}
    # start time of each node's PID 1: unchanged if the second up left the node alone
    starts = {n: on_node(cluster, n, "cut -d' ' -f22 /proc/1/stat") for n in ids}
    assert len(set(ids.values())) == 2, "nodes must not share a machine-id"

    # something the node's own software adds to /etc/hosts survives another up
    on_node(cluster, f"{cluster}-1", "echo '198.18.255.254 added-by-a-role' >> /etc/hosts")

    second = run_testbed("--cluster", cluster, "up", "2")
    assert "booting" not in second.stderr, second.stderr
    assert second.stderr.count("already running") == 2
    assert inventory.read_text() == before
    for node, machine_id in ids.items():
        assert on_node(cluster, node, "cat /etc/machine-id") == machine_id
        assert_running(cluster, node)
        assert on_node(cluster, node, "cut -d' ' -f22 /proc/1/stat") == starts[node]
    hosts = on_node(cluster, f"{cluster}-1", "cat /etc/hosts")
    assert "added-by-a-role" in hosts and f"\t{cluster}-2" in hosts, hosts
    status = run_testbed("--cluster", cluster, "status").stdout
    assert status.count("running") == 2

    # the inventory reaches the nodes with Ansible, with cluster_address per host
    text = inventory.read_text()
    for node in ids:
        assert f"        {node}:\n" in text
    assert text.count("cluster_address: 198.18.") == 2
    ansible = shutil.which("ansible", path=str(REPO / ".venv" / "bin"))
    if ansible is None:
        pytest.fail("ansible not found in .venv: run bin/setup")
    ping = subprocess.run(
        [ansible, "-i", str(inventory), "testbed_nodes", "-m", "ansible.builtin.ping"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert ping.stdout.count("SUCCESS") == 2


@pytest.mark.parametrize("cluster", ["tbtest-kill"], indirect=True)
def test_down_after_killed_up(cluster):
    proc = subprocess.Popen(
        [TESTBED, "--cluster", cluster, "up", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    nodes_dir = STATE / "clusters" / cluster / "nodes"
    deadline = time.monotonic() + 120
    # kill it once the first node booted, while the others are still being made
    while time.monotonic() < deadline:
        if (nodes_dir / f"{cluster}-1" / "console.log").exists():
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("up never got to booting a node")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    left = run_testbed("status", "--check-clean", "--only", cluster, check=False)
    assert left.returncode == 1, "a killed up must have left something to clean"
    run_testbed("--cluster", cluster, "down")
    assert_nothing_left(cluster)


@pytest.mark.parametrize("cluster", ["tbtest-mix"], indirect=True)
def test_node_from_another_release(cluster):
    run_testbed("--cluster", cluster, "up", "old", "new", "--release", "new=trixie", timeout=900)
    old = on_node(cluster, "old", "python3 -c 'import sys; print(sys.version_info[:3])'")
    new = on_node(cluster, "new", "python3 -c 'import sys; print(sys.version_info[:3])'")
    assert old.startswith("(3, 11,"), old
    assert new.startswith("(3, 13,"), new
    assert "trixie" in on_node(cluster, "new", "cat /etc/os-release")
    # both nodes share one bridge: the trixie node reaches the bookworm one
    state = json.loads((STATE / "clusters" / cluster / "cluster.json").read_text())
    old_address = f"198.18.{state['index']}.{11 + state['nodes']['old']['slot']}"
    on_node(cluster, "new", f"ping -c 1 -W 2 {old_address}")
    # PyPI through the host's caching proxy: both nodes download a wheel, the
    # host fetched it from PyPI at most once (it may be cached from earlier runs)
    for node in ("old", "new"):
        got = on_node(cluster, node, "python3 -m venv /tmp/v && /tmp/v/bin/pip download "
                      "--no-deps -d /tmp/d six==1.16.0 && ls /tmp/d")
        assert "six-1.16.0" in got
    log = (STATE / "clusters" / cluster / "pypi-cache.log").read_text()
    assert log.count("serving six-1.16.0-py2.py3-none-any.whl") == 2, log
    assert log.count("downloaded six-1.16.0-py2.py3-none-any.whl") <= 1, log
    # and its index page at most once too (pip asks for it on every install)
    assert log.count("fetched the index page of six ") <= 1, log
    assert list((STATE / "pypi-cache").rglob("six-1.16.0-py2.py3-none-any.whl"))
    # HTTPS from a node goes through the host's NAT and trusts the host's CAs
    assert on_node(cluster, "new", "curl -sS -o /dev/null -w '%{http_code}' https://pypi.org/simple/six/") == "200"
    # node names are unique on the host, across clusters
    clash = run_testbed("--cluster", "tbtest-other", "up", "old", check=False)
    assert clash.returncode == 2 and "already used by cluster tbtest-mix" in clash.stderr
    assert_nothing_left("tbtest-other")
    # a node's release is fixed: asking for another one is refused
    again = run_testbed("--cluster", cluster, "up", "new", "--release", "new=bookworm", check=False)
    assert again.returncode == 2 and "exists with release trixie" in again.stderr


@pytest.mark.parametrize("cluster", ["tbtest-broken"], indirect=True)
def test_node_that_does_not_boot_shows_its_log(cluster):
    run_testbed("--cluster", cluster, "up", "1")
    node_dir = STATE / "clusters" / cluster / "nodes" / f"{cluster}-1"
    # the node crashes (its systemd-nspawn is killed) and its disk breaks:
    # systemd can no longer be executed in it
    pids = [pid for pid, argv in processes() if argv.startswith("systemd-nspawn") and str(node_dir) in argv]
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    # its systemd lives on without its parent: the test bed still sees it
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status = run_testbed("status", "--check-clean", "--only", cluster, check=False).stdout
        if "(orphan)" in status:
            break
        time.sleep(0.2)
    assert "(orphan)" in status, status
    for init in ("usr/lib/systemd/systemd", "lib/systemd/systemd"):
        target = node_dir / "rootfs" / init
        if target.exists():
            target.chmod(0)
    proc = run_testbed("--cluster", cluster, "up", "1", check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"node {cluster}-1 exited while booting" in proc.stderr
    assert "console.log" in proc.stderr  # what the node printed is shown
    # the orphaned systemd was killed before the node was booted again
    status = run_testbed("status", "--check-clean", "--only", cluster, check=False).stdout
    assert "(orphan)" not in status, status


def test_bad_input_is_refused_before_anything_is_made():
    cases = [
        (["--cluster", "tbtest-bad", "up", "0"], "between 1 and 50"),
        (["--cluster", "tbtest-bad", "up", "a", "--release", "a=sid"], "unknown release 'sid'"),
        (["--cluster", "tbtest-bad", "up", "a", "--release", "b=trixie"], "not being started"),
        (["--cluster", "tbtest-bad", "up", "Bad_Name"], "invalid node name"),
        (["--cluster", "Bad/Name", "up", "1"], "invalid cluster name"),
        (["--cluster", "tbtest-bad", "ssh", "nowhere"], "no node 'nowhere'"),
    ]
    for args, message in cases:
        proc = run_testbed(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
    assert_nothing_left("tbtest-bad")


def test_missing_tools_are_named_with_their_package(tmp_path):
    # a PATH holding only what bin/testbed itself needs to start
    (tmp_path / "python3").symlink_to(Path(sys.executable).resolve())  # not a pyenv shim
    for tool in ("dirname", "readlink"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    env = {**os.environ, "PATH": str(tmp_path)}
    proc = run_testbed("status", check=False, env=env)
    assert proc.returncode == 2
    assert "debootstrap" in proc.stderr and "systemd-container" in proc.stderr
    assert "bin/setup" in proc.stderr


def test_not_root_is_refused():
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.fail("runuser (util-linux) is needed for this test")
    proc = subprocess.run(
        [runuser, "-u", "nobody", "--", "/usr/bin/python3", "-m", "testbed", "status"],
        capture_output=True, text=True, cwd=REPO, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2, proc.stderr
    assert "needs root" in proc.stderr


def test_disk_full_is_reported(tmp_path):
    # a real, tiny filesystem as the state directory: the base build cannot fit
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        env = {**os.environ, "HPO_TESTBED_STATE": str(small)}
        proc = run_testbed("--cluster", "tbtest-full", "up", "1", check=False, env=env)
        assert proc.returncode == 2, proc.stderr
        assert "disk full" in proc.stderr and "MiB" in proc.stderr
        # nothing was created: no bridge, no rule
        assert run_testbed("status", "--check-clean", "--only", "tbtest-full",
                       check=False, env=env).returncode == 0
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_concurrent_base_builds_wait_for_one_another(tmp_path):
    """A second command that needs a base being built waits for the lock and
    then uses the finished base instead of building its own."""
    state = tmp_path / "state"
    env = {**os.environ, "HPO_TESTBED_STATE": str(state), "PYTHONPATH": str(REPO)}
    code = "from testbed.base import ensure_base; print(ensure_base('bookworm'))"
    # this test plays the first builder: it holds the build lock
    target = subprocess.run(
        [sys.executable, "-c", "from testbed.base import base_dir; print(base_dir('bookworm'))"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    lock = state / "base" / ".bookworm.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        second = subprocess.Popen([sys.executable, "-c", code], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        assert second.poll() is None, "the second build did not wait for the lock"
        # the first builder finishes: its base appears, then it lets go of the lock
        Path(target).mkdir(parents=True)
        (Path(target) / ".hpo-testbed-ready").write_text("built by the test\n")
        fcntl.flock(handle, fcntl.LOCK_UN)
    out, err = second.communicate(timeout=30)
    assert second.returncode == 0, err
    assert out.strip() == target
    assert "waiting for the bookworm base build" in err
    assert "debootstrap" not in err  # it did not build a second copy
