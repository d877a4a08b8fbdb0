"""Checks of the optuna_worker role that need no node (its argument specs:
tests/roles/test_argument_specs.py).

- files/pack_source.py gives byte-identical archives for identical sources
  (the role's idempotence rests on it) and skips caches;
- the unit template keeps the stop and hardening settings the issue asks for.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

ROLE = Path(__file__).resolve().parents[2] / "roles" / "optuna_worker"


def _pack(src: Path, dest: Path, top: str = "") -> str:
    argv = [sys.executable, str(ROLE / "files" / "pack_source.py"), str(src), str(dest)]
    if top:
        argv.append(top)
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def test_pack_source_is_deterministic_and_skips_caches(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "pkg" / "__init__.py").write_text("X = 1\n")
    (src / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (src / "pyproject.toml").write_text("[project]\nname='p'\n")
    dest = tmp_path / "out" / "a.tar"

    assert _pack(src, dest, "top") == "written"
    first = dest.read_bytes()
    # Touching files (new mtimes) must not change the archive.
    for path in src.rglob("*"):
        path.touch()
    assert _pack(src, dest, "top") == "unchanged"
    assert dest.read_bytes() == first

    names = tarfile.open(fileobj=io.BytesIO(first)).getnames()
    assert sorted(names) == ["top/pkg/__init__.py", "top/pyproject.toml"]

    (src / "pkg" / "__init__.py").write_text("X = 2\n")
    assert _pack(src, dest, "top") == "written"
    assert dest.read_bytes() != first


def test_pack_source_refuses_a_missing_directory(tmp_path: Path) -> None:
    argv = [sys.executable, str(ROLE / "files" / "pack_source.py"), str(tmp_path / "nope"), str(tmp_path / "a.tar")]
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 1
    assert "not a directory" in result.stderr


def test_unit_template_stop_and_hardening() -> None:
    text = (ROLE / "templates" / "hpo-worker@.service.j2").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith(("#", "{"))
    )
    assert settings["KillSignal"] == "SIGTERM"
    assert settings["KillMode"] == "mixed"
    assert settings["Restart"] == "on-failure"
    assert settings["TimeoutStopSec"] == "{{ optuna_worker_stop_timeout }}"
    for key in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "User", "ReadWritePaths"):
        assert key in settings, key
    assert settings["ProtectSystem"] == "strict"
    assert "PASSWORD" not in settings["ExecStart"]
    assert text.startswith("{{ ansible_managed | comment }}")


def test_pack_source_excludes_top_level_entries(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "tests").mkdir(parents=True)
    (src / "pkg" / "tests").mkdir(parents=True)
    (src / "tests" / "test_a.py").write_text("")
    (src / "pkg" / "tests" / "keep.py").write_text("")
    dest = tmp_path / "a.tar"
    argv = [sys.executable, str(ROLE / "files" / "pack_source.py"), str(src), str(dest), "--exclude", "tests"]
    subprocess.run(argv, check=True, capture_output=True)
    assert tarfile.open(dest).getnames() == ["pkg/tests/keep.py"]
