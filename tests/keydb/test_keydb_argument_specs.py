"""keydb role specifics of its argument specs (the mirror and naming checks
shared by every role are in tests/roles/test_argument_specs.py)."""

from __future__ import annotations

import yaml
from keydb_testlib import ROLE


def _yaml(rel: str):
    return yaml.safe_load((ROLE / rel).read_text())


def test_password_is_marked_no_log() -> None:
    options = _yaml("meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert options["keydb_password"].get("no_log") is True


def test_production_default_engine_is_keydb() -> None:
    assert _yaml("defaults/main.yml")["keydb_engine"] == "keydb"
