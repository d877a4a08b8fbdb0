"""Every role's meta/argument_specs.yml mirrors its defaults/main.yml, and its
names follow the house rules (prefixed public names, underscored internals).

One check for all roles: a role added under roles/ without an entry in ROLES
fails test_every_role_is_listed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES_DIR = Path(__file__).resolve().parents[2] / "roles"

# role -> (prefix of public names, prefix of internal names in vars/,
#          options of the main entry point that are required and have no default)
ROLES = {
    "cluster": ("cluster_", "_cluster_", set()),
    "converged": ("converged_", "_converged_", set()),
    "firewall": ("firewall_", "_firewall_", set()),
    "keydb": ("keydb_", "_keydb_", set()),
    "optuna_dashboard": ("optuna_dashboard_", "_optuna_dashboard_", set()),
    "optuna_worker": ("optuna_worker_", "_optuna_worker_", set()),
    "ray": ("ray_", "_ray_", {"ray_node_kind", "ray_start_args", "ray_gcs_address", "ray_num_cpus"}),
    "ray_head": ("ray_head_", "_ray_head_", set()),
    "ray_worker": ("ray_worker_", "_ray_worker_", set()),
    "ray_preflight": ("ray_preflight_", "_ray_preflight_", set()),
}
PY_TYPES = {"str": str, "int": int, "bool": bool, "list": list, "dict": dict, "path": str}


def load(role: str, rel: str) -> dict:
    path = ROLES_DIR / role / rel
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def main_options(role: str) -> dict:
    return load(role, "meta/argument_specs.yml")["argument_specs"]["main"]["options"]


def test_every_role_is_listed() -> None:
    assert sorted(p.name for p in ROLES_DIR.iterdir() if p.is_dir()) == sorted(ROLES)


@pytest.mark.parametrize("role", sorted(ROLES))
def test_main_specs_mirror_defaults(role: str) -> None:
    _, _, required = ROLES[role]
    defaults = load(role, "defaults/main.yml")
    options = main_options(role)
    assert [n for n in options if n not in required] == list(defaults), (
        f"{role}: variables or their order differ between defaults and argument specs"
    )
    for name in required:
        assert options[name].get("required") is True and "default" not in options[name], f"{role}: {name}"
    for name, value in defaults.items():
        spec = options[name]
        assert "default" in spec, f"{role}: {name} has no default in argument specs"
        assert spec["default"] == value, f"{role}: {name} default {spec['default']!r} != {value!r}"
        assert spec.get("description"), f"{role}: {name} has no description"
        assert spec.get("type") in PY_TYPES, f"{role}: {name} has no known type"
        if not (isinstance(value, str) and "{{" in value):
            assert isinstance(value, PY_TYPES[spec["type"]]), f"{role}: {name} default is not a {spec['type']}"
        if "choices" in spec:
            assert value in spec["choices"], f"{role}: {name} default {value!r} not among its choices"


@pytest.mark.parametrize("role", sorted(ROLES))
def test_names_are_prefixed(role: str) -> None:
    public, internal, _ = ROLES[role]
    assert all(name.startswith(public) for name in load(role, "defaults/main.yml")), role
    assert all(name.startswith(internal) for name in load(role, "vars/main.yml")), role


def _tasks(items: list) -> list[dict]:
    """Every task of a task list, blocks unrolled."""
    found = []
    for task in items or []:
        found.append(task)
        for key in ("block", "rescue", "always"):
            found.extend(_tasks(task.get(key, [])))
    return found


@pytest.mark.parametrize("role", sorted(ROLES))
def test_registered_results_and_facts_are_internal(role: str) -> None:
    """register: and set_fact: names carry the role's internal prefix, never the
    public one: a user setting a public variable must not be able to clash with
    a task's result."""
    _, internal, _ = ROLES[role]
    names = []
    for sub in ("tasks", "handlers"):
        for path in sorted((ROLES_DIR / role / sub).glob("*.yml")):
            for task in _tasks(yaml.safe_load(path.read_text())):
                if "register" in task:
                    names.append((path.name, task["register"]))
                facts = task.get("ansible.builtin.set_fact") or {}
                names.extend((path.name, name) for name in facts if name != "cacheable")
    wrong = [(f, n) for f, n in names if not n.startswith(internal)]
    assert not wrong, f"{role}: {wrong} should start with {internal}"
