"""Base root filesystems: one per Debian release, built once with debootstrap.

A base is read-only after it is built: nodes mount it as the lower layer of an
overlayfs. Its directory name carries a hash of the recipe below, so changing
the recipe builds a new base instead of changing one under running nodes.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

from testbed.errors import TestbedError
from testbed.host import STATE_DIR, file_lock, log, mounts_under, require_free_space, run

MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
RELEASES = ("bookworm", "trixie")
DEFAULT_RELEASE = "bookworm"

PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "sudo",
    "python3",
    "python3-venv",
    "python3-apt",
    "ca-certificates",
    "iproute2",
    "iputils-ping",
    "curl",
    "gnupg",
    "procps",
    "less",
]

#: Written into every base. Static addresses come per node (see nodes.py).
SSHD_CONFIG = """\
# hpo-testbed: root logs in with the test bed key only
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
"""

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
RECIPE_VERSION = "3"


def recipe_hash() -> str:
    text = "\n".join([RECIPE_VERSION, MIRROR, *PACKAGES, SSHD_CONFIG])
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def base_dir(release: str) -> Path:
    return STATE_DIR / "base" / f"{release}-{recipe_hash()}"


def ensure_base(release: str) -> Path:
    """Return the ready base rootfs for `release`, building it if needed.

    Several testbed commands may ask at once (engineers share the machine):
    the build runs under an exclusive lock and the others wait for it.
    """
    if release not in RELEASES:
        raise TestbedError(
            f"unknown release {release!r}; known: {', '.join(RELEASES)}"
        )
    target = base_dir(release)
    ready = target / ".hpo-testbed-ready"
    if ready.exists():
        return target
    with file_lock(STATE_DIR / "base" / f".{release}.lock", f"the {release} base build"):
        if ready.exists():  # someone else built it while we waited
            return target
        _build(release, target)
    return target


def _build(release: str, target: Path) -> None:
    require_free_space(STATE_DIR, 1500, f"building the {release} base image")
    scratch = target.with_name(target.name + ".building")
    if scratch.exists():
        log(f"removing an unfinished base build in {scratch}")
        # a killed debootstrap can leave /proc or /sys mounted inside it
        for mount_point in mounts_under(scratch):
            run(["umount", "--lazy", str(mount_point)])
        if mounts_under(scratch):
            raise TestbedError(f"cannot unmount everything below {scratch}; remove it by hand")
        shutil.rmtree(scratch)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the {release} base image with debootstrap (takes minutes, once)")
    started = time.monotonic()
    proc = run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            release,
            str(scratch),
            MIRROR,
        ],
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        debootstrap_log = scratch / "debootstrap" / "debootstrap.log"
        if debootstrap_log.exists():
            tail += "\n--- debootstrap.log (tail) ---\n" + "\n".join(
                debootstrap_log.read_text(errors="replace").splitlines()[-20:]
            )
        raise TestbedError(f"debootstrap of {release} failed:\n{tail}")
    _configure(release, scratch)
    (scratch / ".hpo-testbed-ready").write_text(
        f"release={release}\nrecipe={recipe_hash()}\n"
        f"built={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
    )
    scratch.rename(target)
    log(f"{release} base image ready in {time.monotonic() - started:.0f}s: {target}")


def _configure(release: str, root: Path) -> None:
    """Turn a debootstrap tree into a bootable, SSH-reachable node template."""
    etc = root / "etc"
    # Sources: main + updates + security, in the deb822 format.
    (etc / "apt" / "sources.list").write_text("")
    (etc / "apt" / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n"
        f"URIs: {MIRROR}\n"
        f"Suites: {release} {release}-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\n"
        f"URIs: {SECURITY_MIRROR}\n"
        f"Suites: {release}-security\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    # Trust what the host trusts (egress may be inspected by a local CA).
    local_ca = root / "usr" / "local" / "share" / "ca-certificates"
    local_ca.mkdir(parents=True, exist_ok=True)
    for cert in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy2(cert, local_ca / f"host-{cert.name}")
    run(["chroot", str(root), "update-ca-certificates"])
    # Per-node identity is written at node creation: drop the template's.
    (etc / "machine-id").write_text("")
    dbus_id = root / "var" / "lib" / "dbus" / "machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()
    (etc / "ssh" / "sshd_config.d" / "hpo-testbed.conf").write_text(SSHD_CONFIG)
    # Network: systemd-networkd configures host0 from a per-node file.
    wants = etc / "systemd" / "system" / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    networkd = wants / "systemd-networkd.service"
    if not networkd.exists():
        networkd.symlink_to("/lib/systemd/system/systemd-networkd.service")
    # Units that have nothing to do in a container and only add noise.
    for unit in ("systemd-networkd-wait-online.service", "apt-daily.timer",
                 "apt-daily-upgrade.timer", "e2scrub_reap.service"):
        mask = etc / "systemd" / "system" / unit
        if not mask.exists():
            mask.symlink_to("/dev/null")
    (root / "root" / ".ssh").mkdir(mode=0o700, exist_ok=True)
    run(["chroot", str(root), "apt-get", "clean"])
