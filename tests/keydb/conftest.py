"""Fixtures for the keydb role checks (helpers live in keydb_testlib.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from keydb_testlib import Ansible


@pytest.fixture
def ansible(tmp_path: Path) -> Ansible:
    return Ansible(tmp_path)
