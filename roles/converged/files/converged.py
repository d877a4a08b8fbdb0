#!/usr/bin/env python3
"""A role's stamp on this node: what its last full run left here.

  converged.py check STAMP DIGEST [--forget] [--expect REGEX --probe CMD...]
  converged.py write STAMP DIGEST [--unit UNIT]... [--path PATH]...

`write` (the last task of a role's full run) records DIGEST (the
controller's digest of the role's inputs), each PATH as it is now
(a directory: every file under it; content checksum, mode, owner and
group, or absent) and the UNITs that must stay active and enabled.

`check` prints one JSON line {"converged": bool, "reason": str}: true when
the stamp holds DIGEST, every recorded path is as recorded, every unit is
active and enabled, and the probe (optional) exits 0 with output matching REGEX. With
--forget a stamp that does not match is removed, so a full run that fails
half-way leaves none and the next run is a full one again. Exit status 0
either way; 2 on a usage error.

Only the Python standard library: it runs with the node's python3.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path


def describe(path: Path) -> dict[str, list | None]:
    """PATH -> [sha256, mode, uid, gid] of each file (a directory: every file under it)."""
    if path.is_symlink() or path.is_file():
        st = path.lstat()
        if path.is_symlink():
            digest = "link:" + os.readlink(path)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return {str(path): [digest, st.st_mode & 0o7777, st.st_uid, st.st_gid]}
    if path.is_dir():
        found: dict[str, list | None] = {}
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                found.update(describe(Path(root) / name))
        return found or {str(path): ["empty-directory", 0, 0, 0]}
    return {str(path): None}


def check(stamp_file: Path, digest: str, probe: list[str], expect: str) -> str:
    """'' when converged, else why not."""
    try:
        stamp = json.loads(stamp_file.read_text())
    except FileNotFoundError:
        return "no stamp of a full run"
    except (OSError, ValueError) as exc:
        return f"unreadable stamp ({exc})"
    if stamp.get("digest") != digest:
        return "the role's inputs changed since its last full run"
    recorded = stamp.get("paths", {})
    now: dict[str, list | None] = {}
    for root in stamp.get("roots", []):
        now.update(describe(Path(root)))
    for path in sorted(set(recorded) | set(now)):
        if now.get(path, "missing") != recorded.get(path, "missing"):
            return f"{path} changed since the last full run"
    units = stamp.get("units", [])
    for query, wanted in (("is-active", "active"), ("is-enabled", "enabled")) if units else ():
        states = subprocess.run(["systemctl", query, *units],
                                capture_output=True, text=True).stdout.split()
        for unit, state in zip(units, states + ["unknown"] * len(units)):
            if state != wanted:
                return f"{unit} is {state}"
    if probe:
        try:
            done = subprocess.run(probe, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"probe {probe[0]}: {exc}"
        if done.returncode != 0 or not re.search(expect, done.stdout):
            return f"probe: exit {done.returncode}, {done.stdout.strip()[-200:]}"
    return ""


def write(stamp_file: Path, digest: str, units: list[str], paths: list[str]) -> None:
    recorded: dict[str, list | None] = {}
    for path in paths:
        recorded.update(describe(Path(path)))
    stamp_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = stamp_file.with_suffix(".tmp")
    scratch.write_text(json.dumps(
        {"digest": digest, "units": units, "roots": paths, "paths": recorded}, indent=1))
    scratch.chmod(0o600)
    scratch.replace(stamp_file)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("check", "write"):
        print(__doc__, file=sys.stderr)
        return 2
    action, stamp_file, digest, rest = argv[0], Path(argv[1]), argv[2], argv[3:]
    if action == "write":
        units, paths = [], []
        while rest:
            if len(rest) < 2 or rest[0] not in ("--unit", "--path"):
                print(__doc__, file=sys.stderr)
                return 2
            (units if rest[0] == "--unit" else paths).append(rest[1])
            rest = rest[2:]
        write(stamp_file, digest, units, paths)
        print(json.dumps({"written": str(stamp_file), "paths": len(paths), "units": units}))
        return 0
    forget = "--forget" in rest
    rest = [arg for arg in rest if arg != "--forget"]
    expect, probe = "", []
    if rest:
        if len(rest) < 4 or rest[0] != "--expect" or rest[2] != "--probe":
            print(__doc__, file=sys.stderr)
            return 2
        expect, probe = rest[1], rest[3:]
    reason = check(stamp_file, digest, probe, expect)
    if reason and forget:
        stamp_file.unlink(missing_ok=True)
    print(json.dumps({"converged": not reason, "reason": reason or "as its last full run left it"}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
