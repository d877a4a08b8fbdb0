"""Items 1 and 6 without nodes: the signed repository that the
keydb-packages scenario builds (molecule/keydb-packages/aptrepo.py) is
accepted by real apt through the deb822 source and keyring that the role
writes, and the role's pin holds the version.

The .deb files here are tiny stand-ins built with dpkg-deb (no KeyDB binary
can be downloaded on these machines); they exercise gpg, dpkg-scanpackages,
apt-ftparchive, http and apt, not KeyDB. apt runs with its own state and
source directories under tmp_path, so the host's apt configuration is neither
read nor changed.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from keydb_testlib import REPO, Ansible, role_play

APTREPO = REPO / "molecule" / "keydb-packages" / "aptrepo.py"
PINNED = "6:6.3.4-1+deb12u1"
NEWER = "6:6.3.5-1+deb12u1"


def _arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()


def _deb(out: Path, name: str, version: str, depends: str = "") -> None:
    root = out / f"{name}-{version.replace(':', '_')}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr" / "share" / "doc" / name).mkdir(parents=True)
    (root / "usr" / "share" / "doc" / name / "README").write_text("stand-in package for a test\n")
    control = [f"Package: {name}", f"Version: {version}", f"Architecture: {_arch()}",
               "Maintainer: hpo-cluster tests <test@invalid>", "Description: stand-in for a test"]
    if depends:
        control.append(f"Depends: {depends}")
    (root / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)],
                   check=True, capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _apt(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    opts = [
        f"-o=Dir::State={tmp / 'apt-state'}",
        f"-o=Dir::Cache={tmp / 'apt-cache'}",
        "-o=Dir::Etc::SourceList=/dev/null",
        f"-o=Dir::Etc::SourceParts={tmp / 'sources.list.d'}",
        f"-o=Dir::Etc::PreferencesParts={tmp / 'preferences.d'}",
        "-o=Dir::Etc::Preferences=/dev/null",
        "-o=APT::Sandbox::User=root",
        "-o=Debug::NoLocking=1",
    ]
    return subprocess.run([args[0], *opts, *args[1:]], capture_output=True, text=True, timeout=120)


def test_local_signed_repository_works_with_the_roles_source_key_and_pin(ansible: Ansible) -> None:
    tmp = ansible.dir
    debs = tmp / "debs"
    debs.mkdir()
    _deb(debs, "keydb-tools", PINNED)
    _deb(debs, "keydb-server", PINNED, depends=f"keydb-tools (= {PINNED})")
    _deb(debs, "keydb-tools", NEWER)
    _deb(debs, "keydb-server", NEWER, depends=f"keydb-tools (= {NEWER})")
    out = tmp / "aptrepo"
    subprocess.run([sys.executable, str(APTREPO), "build", str(debs), str(out), "--suite", "bookworm"],
                   check=True, capture_output=True)
    port = _free_port()
    subprocess.run([sys.executable, str(APTREPO), "serve", str(out), "--bind", "127.0.0.1", "--port", str(port)],
                   check=True, capture_output=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for d in ("apt-state/lists/partial", "apt-cache/archives/partial", "sources.list.d", "preferences.d"):
            (tmp / d).mkdir(parents=True)
        inventory = ansible.inventory({"kdbtest": {"cluster_address": "198.18.77.11"}})
        run = ansible.run([role_play("repository.yml")], inventory, {
            "keydb_engine": "keydb",
            "keydb_apt_suite": "bookworm",
            "keydb_apt_repository_url": url,
            "keydb_apt_key_url": f"{url}/keyring.gpg",
            "_keydb_apt_keyring_dir": str(tmp / "keyrings"),
            "_keydb_apt_key_download": str(tmp / "keyrings" / "keydb.download"),
            "_keydb_apt_sources_file": str(tmp / "sources.list.d" / "keydb.sources"),
            "_keydb_apt_preferences_file": str(tmp / "preferences.d" / "keydb"),
        })
        assert run.ok, run.output

        update = _apt(tmp, "apt-get", "update")
        assert update.returncode == 0, update.stdout + update.stderr
        assert "NO_PUBKEY" not in update.stderr and "not signed" not in update.stderr, update.stderr

        policy = _apt(tmp, "apt-cache", "policy", "keydb-server")
        assert f"Candidate: {PINNED}" in policy.stdout, policy.stdout
        assert f"{url} bookworm/main" in policy.stdout, policy.stdout

        sim = _apt(tmp, "apt-get", "install", "--simulate", "--no-install-recommends", "keydb-server")
        assert sim.returncode == 0, sim.stdout + sim.stderr
        assert f"Inst keydb-server ({PINNED.split(':', 1)[1]}" in sim.stdout or \
            f"Inst keydb-server ({PINNED}" in sim.stdout, sim.stdout
        assert "Inst keydb-tools" in sim.stdout

        # Another key in the keyring: apt refuses the repository.
        other = tmp / "other-gnupg"
        other.mkdir(mode=0o700)
        gpg = ["gpg", "--homedir", str(other), "--batch", "--yes", "--passphrase", ""]
        subprocess.run([*gpg, "--quick-gen-key", "someone else <x@invalid>", "rsa2048", "sign", "never"],
                       check=True, capture_output=True)
        keyring = tmp / "keyrings" / "keydb.gpg"
        keyring.write_bytes(subprocess.run([*gpg, "--export"], check=True, capture_output=True).stdout)
        refused = _apt(tmp, "apt-get", "update")
        assert refused.returncode != 0 or "NO_PUBKEY" in refused.stderr, refused.stdout + refused.stderr
        assert "NO_PUBKEY" in refused.stderr or "not signed" in refused.stderr, refused.stderr
    finally:
        subprocess.run([sys.executable, str(APTREPO), "stop", str(out)], check=True, capture_output=True)
    assert not (out / "server.pid").exists()
