"""converged_digest: the controller's digest of what a role's run depends on.

    {{ vars | converged_digest(hostvars, groups, ['keydb', 'cluster', '/abs/file']) }}

It hashes, in order:
  - every public variable of this host as the role sees it (inventory,
    group and host vars, extra vars, play vars, the role's defaults resolved
    with this host's facts); public means not starting with '_' or
    'ansible_' (registered results and derived values start with '_' in
    this project; they follow from the public ones), not this role's own
    converged_* settings and not a magic variable;
  - the public variables of every host of the inventory (a role's files
    name its peers: KeyDB's replicaof lines, the firewall's members, the
    Ray head's address) and the group membership;
  - the bytes of every file of the named roles (beside this one in roles/)
    and under the given absolute paths (the packed worker and objective code).

A value that cannot be resolved here (it needs a result of this run) is
hashed as its error text: it is then derived from node state, which the
stamp's checksums cover.
"""

from __future__ import annotations

import hashlib
import json
import os

# Magic and per-run variables: not inputs of a role (omit is random per run).
NOT_INPUTS = frozenset({
    "groups", "group_names", "hostvars", "inventory_hostname", "inventory_hostname_short",
    "inventory_dir", "inventory_file", "omit", "play_hosts", "playbook_dir", "role_name",
    "role_names", "role_path", "role_uuid", "environment", "vars", "module_setup",
    "gather_subset", "molecule_yml", "molecule_file",
    "molecule_ephemeral_directory", "molecule_scenario_directory", "molecule_instance_config",
})


def _public(variables) -> dict[str, str]:
    values: dict[str, str] = {}
    for name in sorted(variables):
        if name.startswith(("_", "ansible_", "converged_")) or name in NOT_INPUTS:
            continue
        try:
            values[name] = json.dumps(variables[name], sort_keys=True, default=str)
        except Exception as exc:  # an undefined or failing template: see the module doc
            values[name] = f"unresolved: {type(exc).__name__}"
    return values


ROLES_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _files(inputs) -> list[tuple[str, str]]:
    found = []
    for entry in inputs:
        top = entry if os.path.isabs(entry) else os.path.join(ROLES_DIR, entry)
        if os.path.isfile(top):
            candidates = [top]
        else:
            candidates = []
            for root, dirs, files in os.walk(top):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                candidates += [os.path.join(root, name) for name in sorted(files)]
        for path in candidates:
            with open(path, "rb") as handle:
                found.append((os.path.join(entry, os.path.relpath(path, top)) if path != top else entry,
                              hashlib.sha256(handle.read()).hexdigest()))
    return found


def converged_digest(variables, hostvars, groups, paths) -> str:
    inventory = {host: _public(hostvars[host]) for host in sorted(groups.get("all", []))}
    document = {
        "self": _public(variables),
        "inventory": inventory,
        "groups": {name: sorted(members) for name, members in sorted(groups.items())},
        "files": _files(paths),
    }
    text = json.dumps(document, sort_keys=True, indent=1)
    digest = hashlib.sha256(text.encode()).hexdigest()
    if os.environ.get("CONVERGED_DEBUG_DIR"):  # why two digests differ: diff the two files
        name = f"{variables.get('inventory_hostname', 'host')}-{digest[:12]}.json"
        with open(os.path.join(os.environ["CONVERGED_DEBUG_DIR"], name), "w") as handle:
            handle.write(text)
    return digest


class FilterModule:
    def filters(self):
        return {"converged_digest": converged_digest}
