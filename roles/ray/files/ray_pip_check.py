"""Exit 0 when every pip requirement given is installed in this interpreter's environment at
a version it allows, and so is every requirement of the extras it names (ray[tune]: pandas,
pyarrow, ...); else print the first one missing and exit 1. Run by roles/ray (tasks/install.yml)
with the Ray virtualenv's python, so a warm run needs no pip."""

from __future__ import annotations

import importlib.metadata as md
import sys

from packaging.requirements import Requirement


def missing(spec: str) -> str | None:
    req = Requirement(spec)
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        return f"{req.name}: not installed"
    if not req.specifier.contains(version, prereleases=True):
        return f"{req.name}: {version} installed, {req.specifier} wanted"
    for extra in sorted(req.extras):
        for dep in md.requires(req.name) or []:
            d = Requirement(dep)
            if d.marker is None or "extra" not in str(d.marker) or not d.marker.evaluate({"extra": extra}):
                continue
            d.marker = None
            why = missing(str(d))
            if why:
                return f"{req.name}[{extra}] needs {why}"
    return None


def main() -> int:
    for spec in sys.argv[1:]:
        why = missing(spec)
        if why:
            print(why)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
