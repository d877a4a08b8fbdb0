"""Each Ray role's meta/argument_specs.yml mirrors its defaults/main.yml, and
its names follow the house rules (prefixed public names, _prefixed internals)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"
# role -> (prefix of public names, options that are required and have no default)
RAY_ROLES = {
    "ray": ("ray_", {"ray_node_kind", "ray_start_args", "ray_gcs_address", "ray_num_cpus"}),
    "ray_head": ("ray_head_", set()),
    "ray_worker": ("ray_worker_", set()),
    "ray_preflight": ("ray_preflight_", set()),
}
PY_TYPES = {"str": str, "int": int, "bool": bool, "list": list, "dict": dict, "path": str}


def load(role: str, rel: str):
    path = ROLES / role / rel
    return yaml.safe_load(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize("role", sorted(RAY_ROLES))
def test_main_specs_mirror_defaults(role):
    prefix, required = RAY_ROLES[role]
    defaults = load(role, "defaults/main.yml")
    options = load(role, "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert set(options) - required == set(defaults), "names differ between defaults and specs"
    for name in required:
        assert options[name].get("required") is True and "default" not in options[name], name
        assert name not in defaults, name
    for name, value in defaults.items():
        spec = options[name]
        assert spec.get("default") == value, f"{role}: {name} default {spec.get('default')!r} != {value!r}"
        assert spec.get("description"), f"{role}: {name} has no description"
        assert spec.get("type") in PY_TYPES, f"{role}: {name} has no known type"
        if not (isinstance(value, str) and "{{" in value):
            assert isinstance(value, PY_TYPES[spec["type"]]), f"{role}: {name} default is not a {spec['type']}"


@pytest.mark.parametrize("role", sorted(RAY_ROLES))
def test_names_are_prefixed(role):
    prefix, _ = RAY_ROLES[role]
    assert all(name.startswith(prefix) for name in load(role, "defaults/main.yml"))
    assert all(name.startswith("_" + prefix) for name in load(role, "vars/main.yml") or {})


def test_probe_entry_point_mirrors_the_same_defaults():
    defaults = load("ray", "defaults/main.yml")
    probe = load("ray", "meta/argument_specs.yml")["argument_specs"]["probe"]["options"]
    for name, spec in probe.items():
        if name == "ray_probe_host":
            assert "default" not in spec
        else:
            assert spec["default"] == defaults[name], name
