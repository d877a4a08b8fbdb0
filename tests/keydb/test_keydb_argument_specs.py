"""meta/argument_specs.yml of the keydb role mirrors defaults/main.yml, and
the role's names follow the house rules (keydb_ public, _keydb_ internal)."""

from __future__ import annotations

import yaml
from keydb_testlib import ROLE


def _yaml(rel: str):
    return yaml.safe_load((ROLE / rel).read_text())


def test_argument_specs_mirror_defaults() -> None:
    defaults = _yaml("defaults/main.yml")
    options = _yaml("meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert list(defaults) == list(options), "variables or their order differ between defaults and argument specs"
    for name, value in defaults.items():
        spec = options[name]
        assert "default" in spec, f"{name}: no default in argument specs"
        assert spec["default"] == value, f"{name}: default {spec['default']!r} != {value!r}"
        assert spec.get("description"), f"{name}: no description"
        assert spec.get("type"), f"{name}: no type"


def test_defaults_match_their_declared_types() -> None:
    py_types = {"str": str, "int": int, "bool": bool, "list": list, "dict": dict}
    options = _yaml("meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    for name, spec in options.items():
        assert isinstance(spec["default"], py_types[spec["type"]]), name
        if "choices" in spec:
            assert spec["default"] in spec["choices"], name


def test_names_are_prefixed() -> None:
    assert all(name.startswith("keydb_") for name in _yaml("defaults/main.yml"))
    assert all(name.startswith("_keydb") for name in _yaml("vars/main.yml"))


def test_password_is_marked_no_log() -> None:
    options = _yaml("meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert options["keydb_password"].get("no_log") is True


def test_production_default_engine_is_keydb() -> None:
    assert _yaml("defaults/main.yml")["keydb_engine"] == "keydb"
