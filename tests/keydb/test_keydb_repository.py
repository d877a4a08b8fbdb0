"""The keydb role's apt repository tasks (repository.yml), run for real
against a small signed repository served over HTTP on 127.0.0.1 by this test.

Checked: the keyring file holds exactly the served key (binary -> .gpg,
ASCII-armored -> .asc), the deb822 source trusts only that keyring, the
version pin, that the keyring verifies the repository's InRelease with
gpgv (as apt does), a second run changes nothing, and the error messages
for an unreachable repository or key name the URL and the variable.

Only the paths the role writes under /etc/apt are redirected into tmp_path.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from keydb_testlib import Ansible, role_play


def _gpg(home: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes", *args],
                          check=True, capture_output=True, **kw)


@pytest.fixture(scope="module")
def served_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A repository with a signed Release for suite bookworm, and its key."""
    root = tmp_path_factory.mktemp("aptrepo")
    home = root / "gnupg"
    home.mkdir(mode=0o700)
    _gpg(home, "--passphrase", "", "--quick-gen-key", "hpo-cluster test repository <test@invalid>",
         "rsa3072", "sign", "never")
    repo = root / "www" / "repo"
    suite = repo / "dists" / "bookworm"
    (suite / "main" / "binary-amd64").mkdir(parents=True)
    (suite / "main" / "binary-amd64" / "Packages").write_text("")
    release = subprocess.run(
        ["apt-ftparchive", "-o", "APT::FTPArchive::Release::Suite=bookworm",
         "-o", "APT::FTPArchive::Release::Codename=bookworm", "release", str(suite)],
        check=True, capture_output=True).stdout
    (suite / "Release").write_bytes(release)
    _gpg(home, "--clearsign", "-o", str(suite / "InRelease"), str(suite / "Release"))
    binary_key = _gpg(home, "--export").stdout
    armored_key = _gpg(home, "--export", "--armor").stdout
    (repo / "keyring.gpg").write_bytes(binary_key)
    (repo / "keyring.asc").write_bytes(armored_key)

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(root / "www")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port)
        yield {
            "url": f"http://127.0.0.1:{port}/repo",
            "binary_key": binary_key,
            "armored_key": armored_key,
            "inrelease": suite / "InRelease",
        }
    finally:
        server.terminate()
        server.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"http.server did not listen on 127.0.0.1:{port}")


def _paths(tmp: Path) -> dict:
    return {
        "_keydb_apt_keyring_dir": str(tmp / "keyrings"),
        "_keydb_apt_key_download": str(tmp / "keyrings" / "keydb.download"),
        "_keydb_apt_sources_file": str(tmp / "keydb.sources"),
        "_keydb_apt_preferences_file": str(tmp / "keydb.pref"),
    }


def _run(ansible: Ansible, **extra):
    inventory = ansible.inventory({"kdbtest": {"cluster_address": "198.18.77.11"}})
    extra = {"keydb_engine": "keydb", "keydb_apt_suite": "bookworm", **_paths(ansible.dir), **extra}
    return ansible.run([role_play("repository.yml")], inventory, extra)


def _deb822(path: Path) -> dict[str, str]:
    fields = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def test_binary_key_source_and_pin(ansible: Ansible, served_repo: dict) -> None:
    url = served_repo["url"]
    run = _run(ansible, keydb_apt_repository_url=url + "/", keydb_apt_key_url=url + "/keyring.gpg")
    assert run.ok, run.output
    keyring = ansible.dir / "keyrings" / "keydb.gpg"
    assert keyring.read_bytes() == served_repo["binary_key"]
    assert oct(keyring.stat().st_mode & 0o777) == "0o644"
    assert not (ansible.dir / "keyrings" / "keydb.asc").exists()

    sources = ansible.dir / "keydb.sources"
    assert "Ansible managed" in "".join(sources.read_text().splitlines()[:3])
    assert _deb822(sources) == {
        "Types": "deb",
        "URIs": url,  # trailing slash of the variable dropped
        "Suites": "bookworm",
        "Components": "main",
        "Signed-By": str(keyring),
    }
    assert _deb822(ansible.dir / "keydb.pref") == {
        "Package": "keydb-tools keydb-server",
        "Pin": "version 6:6.3.4-*",
        "Pin-Priority": "1001",
    }
    # The keyring verifies the repository's signature the way apt does.
    subprocess.run(["gpgv", "--keyring", str(keyring), str(served_repo["inrelease"])],
                   check=True, capture_output=True)

    again = _run(ansible, keydb_apt_repository_url=url + "/", keydb_apt_key_url=url + "/keyring.gpg")
    assert again.ok, again.output
    assert again.changed() == 0, again.output


def test_armored_key_goes_to_an_asc_keyring(ansible: Ansible, served_repo: dict) -> None:
    url = served_repo["url"]
    first = _run(ansible, keydb_apt_repository_url=url, keydb_apt_key_url=url + "/keyring.gpg")
    assert first.ok, first.output
    run = _run(ansible, keydb_apt_repository_url=url, keydb_apt_key_url=url + "/keyring.asc")
    assert run.ok, run.output
    keyring = ansible.dir / "keyrings" / "keydb.asc"
    assert keyring.read_bytes() == served_repo["armored_key"]
    assert not (ansible.dir / "keyrings" / "keydb.gpg").exists(), "stale binary keyring left behind"
    assert _deb822(ansible.dir / "keydb.sources")["Signed-By"] == str(keyring)


def test_key_checksum_is_enforced(ansible: Ansible, served_repo: dict) -> None:
    url = served_repo["url"]
    good = "sha256:" + hashlib.sha256(served_repo["binary_key"]).hexdigest()
    run = _run(ansible, keydb_apt_repository_url=url, keydb_apt_key_url=url + "/keyring.gpg",
               keydb_apt_key_checksum=good)
    assert run.ok, run.output
    os.unlink(ansible.dir / "keyrings" / "keydb.download")
    bad = "sha256:" + "0" * 64
    run = _run(ansible, keydb_apt_repository_url=url, keydb_apt_key_url=url + "/keyring.gpg",
               keydb_apt_key_checksum=bad)
    assert not run.ok
    assert f"cannot fetch KeyDB's signing key from {url}/keyring.gpg" in run.output
    assert "keydb_apt_key_url" in run.output


def test_unreachable_repository_names_url_and_variable(ansible: Ansible) -> None:
    url = f"http://127.0.0.1:{_free_port()}/keydb-mirror"
    run = _run(ansible, keydb_apt_repository_url=url, keydb_apt_key_url=url + "/keyring.gpg",
               keydb_apt_timeout=5)
    assert not run.ok
    assert f"host kdbtest: cannot reach KeyDB's apt repository at {url}/dists/bookworm/Release" in run.output
    assert "Set keydb_apt_repository_url" in run.output
    assert not (ansible.dir / "keydb.sources").exists(), "nothing may be written before the probe passes"


def test_suite_missing_from_mirror_names_status(ansible: Ansible, served_repo: dict) -> None:
    url = served_repo["url"]
    run = _run(ansible, keydb_apt_repository_url=url, keydb_apt_key_url=url + "/keyring.gpg",
               keydb_apt_suite="bullseye")
    assert not run.ok
    assert f"{url}/dists/bullseye/Release" in run.output
    assert "HTTP status 404" in run.output


def test_unreachable_key_names_url_and_variable(ansible: Ansible, served_repo: dict) -> None:
    url = served_repo["url"]
    run = _run(ansible, keydb_apt_repository_url=url, keydb_apt_key_url=url + "/no-such-key.gpg")
    assert not run.ok
    assert f"cannot fetch KeyDB's signing key from {url}/no-such-key.gpg" in run.output
    assert "Set keydb_apt_key_url" in run.output
