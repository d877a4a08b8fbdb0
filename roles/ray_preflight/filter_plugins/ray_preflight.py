"""Filters behind the Ray preflight: inventory checks and the version table.

They take plain lists and dicts, so tests/ray/test_preflight_filters.py
exercises them without Ansible.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

RESOURCE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")
RESERVED_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}
MISSING = object()


def _get(mapping: Any, key: str, default: Any = MISSING) -> Any:
    try:
        return mapping[key]
    except (KeyError, TypeError):
        return default
    except Exception:  # an undefined inventory template; report it as unset
        return default


def ray_preflight_nodes_from(hosts: list[str], hostvars: Any, node_ips: Mapping) -> list[dict]:
    """One plain dict per Ray host with the inventory values the checks need.

    node_ips is roles/cluster's _cluster_ray_node_ips (host -> node IP, worked
    out there once); hostvars only tell which variable set it, for messages.
    """
    nodes = []
    for host in hosts:
        hv = _get(hostvars, host, {})
        ip = node_ips.get(host) if isinstance(node_ips, Mapping) else None
        nodes.append({
            "host": host,
            "ip": ip or None,
            "ip_var": "ray_node_ip" if _get(hv, "ray_node_ip") is not MISSING else "cluster_address",
            "num_cpus": None if (v := _get(hv, "ray_num_cpus")) is MISSING else v,
            "num_gpus": 0 if (v := _get(hv, "ray_num_gpus")) is MISSING else v,
            "resources": {} if (v := _get(hv, "ray_resources")) is MISSING else v,
        })
    return nodes


def _is_count(value: Any) -> bool:
    """A whole number >= 0; digits in a string count too (-e sets strings)."""
    if isinstance(value, str):
        return value.strip().isdigit()
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def ray_preflight_inventory_errors(
    nodes: list[dict], heads: list[str], workers: list[str]
) -> list[str]:
    """Every inventory mistake found, one message each, naming host and variable."""
    errors: list[str] = []
    if len(heads) != 1:
        held = ", ".join(heads) if heads else "no host"
        errors.append(
            f"inventory group ray_head must hold exactly one host; it holds {held}"
        )
    for host in sorted(set(heads) & set(workers)):
        errors.append(f"{host}: is in both ray_head and ray_workers; pick one")

    seen: dict[str, str] = {}
    for node in nodes:
        host, ip, ip_var = node["host"], node["ip"], node["ip_var"]
        if ip in (None, ""):
            errors.append(
                f"{host}: cluster_address is not set (the address this host uses "
                "for cluster traffic; never guessed from the default route)"
            )
        else:
            try:
                ipaddress.ip_address(str(ip))
            except ValueError:
                errors.append(f"{host}: {ip_var} '{ip}' is not an IP address")
            else:
                if str(ip) in seen:
                    errors.append(
                        f"{host}: {ip_var} {ip} is also the node IP of {seen[str(ip)]}; "
                        "every Ray node needs its own address"
                    )
                else:
                    seen[str(ip)] = host
        if node["num_cpus"] is None:
            errors.append(f"{host}: ray_num_cpus is not set (CPUs this host declares to Ray)")
        elif not _is_count(node["num_cpus"]):
            errors.append(
                f"{host}: ray_num_cpus must be a whole number >= 0, not {node['num_cpus']!r}"
            )
        if not _is_count(node["num_gpus"]):
            errors.append(
                f"{host}: ray_num_gpus must be a whole number >= 0, not {node['num_gpus']!r}"
            )
        resources = node["resources"]
        if not isinstance(resources, Mapping):
            errors.append(f"{host}: ray_resources must be a mapping of name to amount")
            continue
        for name, amount in resources.items():
            if not RESOURCE_NAME.match(str(name)):
                errors.append(
                    f"{host}: ray_resources name '{name}' must match {RESOURCE_NAME.pattern}"
                )
            elif name in RESERVED_RESOURCES:
                errors.append(
                    f"{host}: ray_resources may not set '{name}'; use ray_num_cpus, "
                    "ray_num_gpus or ray_object_store_memory"
                )
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
                errors.append(
                    f"{host}: ray_resources['{name}'] must be a number >= 0, not {amount!r}"
                )
    return errors


def _ray_cell(row: Mapping) -> str:
    installed, target = row.get("ray_installed"), row.get("ray_target")
    if not row.get("in_run", True):
        return f"{installed or 'not installed'} (not in this run)"
    if installed is None:
        return f"not installed - will install {target}"
    if installed != target:
        return f"{installed} - will install {target}"
    return str(installed)


def _python_cell(row: Mapping) -> str:
    where = "venv" if row.get("venv") else row.get("python_path", "?")
    return f"{row.get('python')} ({where})"


def _split_upgrade(rows: list[dict], ray_hosts: list[str] | None) -> str | None:
    """Why a version change under --limit is refused, or None.

    A node that already runs Ray and is to run another version is a version
    change; done on some nodes only, it would leave the cluster on two
    versions, and Ray joins no node whose version differs from the head's.
    """
    in_run = {row["host"] for row in rows if row.get("in_run", True)}
    left_out = sorted(set(ray_hosts or []) - in_run)
    changes = sorted(
        (row["host"], row.get("ray_installed"), row.get("ray_target"))
        for row in rows
        if row.get("in_run", True) and row.get("ray_installed") is not None
        and row.get("ray_installed") != row.get("ray_target")
    )
    if not changes or not left_out:
        return None
    what = ", ".join(f"{host} {old} -> {new}" for host, old, new in changes)
    return (
        f"ray_version changes ({what}) but this run leaves out {', '.join(left_out)} "
        "(--limit): every Ray node must run the head's version, so a version change "
        "runs on all Ray nodes at once; run it without --limit"
    )


def ray_preflight_version_table(
    rows: list[dict], head: str, ray_hosts: list[str] | None = None
) -> dict:
    """Compare each node's Ray and Python with the head's.

    A row: host, python (major.minor.micro), python_path, venv (bool),
    ray_installed (None if absent), ray_target (what runs after this run),
    in_run (False for the head when --limit leaves it out).
    ray_hosts: every Ray host of the inventory (to refuse an upgrade that
    --limit would split).
    Returns {"ok", "table" (text), "lines", "differences" (one line per node)}.
    """
    by_host = {row["host"]: row for row in rows}
    head_row = by_host.get(head)
    differences: list[str] = []
    body = []
    for row in sorted(rows, key=lambda r: (r["host"] != head, r["host"])):
        if head_row is None:
            what = "head not probed"
        elif row["host"] == head:
            what = "(head)"
        else:
            parts = []
            if row.get("ray_target") != head_row.get("ray_target"):
                parts.append(f"Ray {row.get('ray_target')} != {head_row.get('ray_target')}")
            if row.get("python") != head_row.get("python"):
                parts.append(f"Python {row.get('python')} != {head_row.get('python')}")
            what = "; ".join(parts) if parts else "-"
            if parts:
                differences.append(f"{row['host']}: {what} (head {head})")
        body.append([row["host"], _ray_cell(row), _python_cell(row), what])
    if head_row is None:
        differences.append(f"the head {head} could not be probed")
    elif not head_row.get("in_run", True) and head_row.get("ray_installed") is None:
        differences.append(
            f"the head {head} has no Ray installed; set up the head first "
            "(run without --limit, or include the head in --limit)"
        )
    if (split := _split_upgrade(rows, ray_hosts)) is not None:
        differences.append(split)
    header = ["host", "Ray", "Python", "differs from the head"]
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(4)]

    def fmt(cells: list[str]) -> str:
        return " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    lines = [fmt(header), "-+-".join("-" * w for w in widths)] + [fmt(r) for r in body]
    return {
        "ok": not differences,
        "table": "\n".join(lines),
        "lines": lines,
        "differences": differences,
    }


class FilterModule:
    def filters(self) -> dict:
        return {
            "ray_preflight_nodes_from": ray_preflight_nodes_from,
            "ray_preflight_inventory_errors": ray_preflight_inventory_errors,
            "ray_preflight_version_table": ray_preflight_version_table,
        }
