"""Ray specifics of the argument specs (the mirror and naming checks shared by
every role are in tests/roles/test_argument_specs.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles" / "ray"


def load(rel: str):
    return yaml.safe_load((ROLE / rel).read_text())


def test_probe_entry_point_mirrors_the_same_defaults():
    defaults = load("defaults/main.yml")
    probe = load("meta/argument_specs.yml")["argument_specs"]["probe"]["options"]
    for name, spec in probe.items():
        if name == "ray_probe_host":
            assert "default" not in spec
        else:
            assert spec["default"] == defaults[name], name
