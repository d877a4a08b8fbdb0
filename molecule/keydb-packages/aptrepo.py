#!/usr/bin/env python3
"""A local, signed apt repository made from a directory of .deb files, for
the keydb-packages scenario (and tests/keydb/test_keydb_aptrepo.py).

  aptrepo.py build DEBS_DIR OUT_DIR --suite bookworm
      OUT_DIR/repo/   pool/main/*.deb, dists/SUITE/{Release,InRelease,Release.gpg},
                      dists/SUITE/main/binary-ARCH/Packages(.gz), keyring.gpg
      OUT_DIR/gnupg/  the throw-away signing key (made on first build)
  aptrepo.py serve OUT_DIR --bind ADDR --port PORT
      starts python's http.server on ADDR:PORT in the background, serving
      OUT_DIR/repo at http://ADDR:PORT/; writes OUT_DIR/server.pid
  aptrepo.py stop OUT_DIR
      stops that server (no error when it is not running)

Real tools only: gpg, dpkg-scanpackages (dpkg-dev), apt-ftparchive (apt-utils).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, check=True, capture_output=True, **kw)
    except FileNotFoundError as exc:
        sys.exit(f"aptrepo: {argv[0]} is missing (Debian packages: gnupg, dpkg-dev, apt-utils): {exc}")
    except subprocess.CalledProcessError as exc:
        sys.exit(f"aptrepo: {' '.join(argv)} failed:\n{exc.stderr.decode(errors='replace')}")


def _gpg(home: Path, *args: str) -> bytes:
    return _run(["gpg", "--homedir", str(home), "--batch", "--yes", "--pinentry-mode", "loopback",
                 "--passphrase", "", *args]).stdout


def build(debs_dir: Path, out: Path, suite: str) -> Path:
    debs = sorted(debs_dir.glob("*.deb"))
    if not debs:
        sys.exit(f"aptrepo: no .deb files in {debs_dir}")
    home = out / "gnupg"
    if not home.exists():
        home.mkdir(parents=True, mode=0o700)
        _gpg(home, "--quick-gen-key", "hpo-cluster local KeyDB repository <keydb-test@invalid>",
             "rsa3072", "sign", "never")
    repo = out / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    pool = repo / "pool" / "main"
    pool.mkdir(parents=True)
    arches = set()
    for deb in debs:
        shutil.copy2(deb, pool / deb.name)
        arch = _run(["dpkg-deb", "--field", str(deb), "Architecture"]).stdout.decode().strip()
        arches.add(arch)
    binary_arches = sorted(a for a in arches if a != "all") or ["amd64"]
    dist = repo / "dists" / suite
    for arch in binary_arches:
        target = dist / "main" / f"binary-{arch}"
        target.mkdir(parents=True)
        packages = _run(["dpkg-scanpackages", "--multiversion", "--arch", arch, "pool"], cwd=repo).stdout
        (target / "Packages").write_bytes(packages)
        with gzip.open(target / "Packages.gz", "wb") as fh:
            fh.write(packages)
    release = _run([
        "apt-ftparchive",
        "-o", f"APT::FTPArchive::Release::Suite={suite}",
        "-o", f"APT::FTPArchive::Release::Codename={suite}",
        "-o", "APT::FTPArchive::Release::Components=main",
        "-o", f"APT::FTPArchive::Release::Architectures={' '.join(binary_arches)}",
        "release", ".",
    ], cwd=dist).stdout
    (dist / "Release").write_bytes(release)
    _gpg(home, "--clearsign", "--output", str(dist / "InRelease"), str(dist / "Release"))
    _gpg(home, "--armor", "--detach-sign", "--output", str(dist / "Release.gpg"), str(dist / "Release"))
    (repo / "keyring.gpg").write_bytes(_gpg(home, "--export"))
    return repo


def serve(out: Path, bind: str, port: int) -> None:
    stop(out)
    log = open(out / "server.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", bind, "--directory", str(out / "repo")],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    (out / "server.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"aptrepo: http.server exited at once; see {out / 'server.log'}")
        with socket.socket() as s:
            if s.connect_ex((bind, port)) == 0:
                return
        time.sleep(0.1)
    sys.exit(f"aptrepo: http.server does not answer on {bind}:{port}")


def stop(out: Path) -> None:
    pidfile = out / "server.pid"
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        cmdline = b""
    if b"http.server" in cmdline:  # never signal a recycled pid
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
    pidfile.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or rebuild) the signed repository")
    b.add_argument("debs_dir", type=Path)
    b.add_argument("out", type=Path)
    b.add_argument("--suite", default="bookworm")
    s = sub.add_parser("serve", help="serve OUT/repo over HTTP in the background")
    s.add_argument("out", type=Path)
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    t = sub.add_parser("stop", help="stop the server started by serve")
    t.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "build":
        print(build(args.debs_dir, args.out, args.suite))
    elif args.command == "serve":
        serve(args.out, args.bind, args.port)
    else:
        stop(args.out)


if __name__ == "__main__":
    main()
