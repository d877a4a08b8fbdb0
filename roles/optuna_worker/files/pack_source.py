#!/usr/bin/env python3
"""Pack a Python project directory into a deterministic tar archive.

Usage: pack_source.py SOURCE_DIR DEST_TAR [TOP_DIR_NAME] [--exclude NAME]...

Entries are sorted, owned by 0:0 with mtime 0 and normalised modes, and build
or cache leftovers are skipped, so the same source always gives the same bytes.
With TOP_DIR_NAME every entry lives under that directory (pip wants one top
directory in a source archive); without it entries are relative to SOURCE_DIR.
--exclude NAME leaves out the top-level entry NAME of SOURCE_DIR (for example
the worker's tests, which the installed package does not need).
DEST_TAR is rewritten only when its content would change; the script prints
"written" or "unchanged" (Ansible's changed_when reads it).
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".venv", "build", "dist", ".git"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")


def _members(root: Path, exclude: frozenset[str] = frozenset()) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        top = Path(dirpath) == root
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in SKIP_DIRS and not d.endswith(SKIP_SUFFIXES) and not (top and d in exclude)
        )
        for name in sorted(filenames):
            if not name.endswith(SKIP_SUFFIXES) and not (top and name in exclude):
                found.append(Path(dirpath, name))
    return found


def pack(root: Path, top: str, exclude: frozenset[str] = frozenset()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _members(root, exclude):
            rel = path.relative_to(root).as_posix()
            info = tarfile.TarInfo(f"{top}/{rel}" if top else rel)
            data = path.read_bytes()
            info.size = len(data)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main(argv: list[str]) -> int:
    positional: list[str] = []
    exclude: set[str] = set()
    args = iter(argv[1:])
    for arg in args:
        if arg == "--exclude":
            exclude.add(next(args, ""))
        else:
            positional.append(arg)
    if len(positional) not in (2, 3) or "" in exclude:
        print(__doc__, file=sys.stderr)
        return 2
    root, dest = Path(positional[0]), Path(positional[1])
    top = positional[2] if len(positional) == 3 else ""
    if not root.is_dir():
        print(f"{root}: not a directory", file=sys.stderr)
        return 1
    data = pack(root, top, frozenset(exclude))
    if dest.is_file() and dest.read_bytes() == data:
        print("unchanged")
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    print("written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
