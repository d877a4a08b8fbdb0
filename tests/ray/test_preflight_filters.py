"""The preflight's decisions, without nodes: inventory errors and the version
table (roles/ray_preflight/filter_plugins/ray_preflight.py). The same checks
run against real nodes in molecule/ray-preflight."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[2] / "roles/ray_preflight/filter_plugins/ray_preflight.py"
_spec = importlib.util.spec_from_file_location("ray_preflight_filters", PLUGIN)
assert _spec and _spec.loader
rp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rp)

HOSTVARS = {
    "m1": {"cluster_address": "198.18.9.20", "ray_num_cpus": 3, "ray_num_gpus": 1},
    "bric": {"cluster_address": "198.18.9.134", "ray_num_cpus": 3},
    "m4": {"cluster_address": "198.18.9.230", "ray_num_cpus": 8, "ray_resources": {"big_mem": 1}},
}


def node_ips(hostvars):
    """What roles/cluster computes (_cluster_ray_node_ips); tested there by
    tests/cluster/test_addresses.py."""
    return {h: str(hv.get("ray_node_ip", hv.get("cluster_address", ""))) for h, hv in hostvars.items()}


def errors(hostvars=None, heads=("m1",), workers=("bric", "m4")):
    hostvars = HOSTVARS if hostvars is None else hostvars
    hosts = list(dict.fromkeys([*heads, *workers]))
    nodes = rp.ray_preflight_nodes_from(hosts, hostvars, node_ips(hostvars))
    return rp.ray_preflight_inventory_errors(nodes, list(heads), list(workers))


def with_host(name, **values):
    changed = {host: dict(hv) for host, hv in HOSTVARS.items()}
    changed[name].update(values)
    return changed


def test_a_good_inventory_has_no_errors():
    assert errors() == []


def test_the_node_ip_comes_from_the_cluster_role_and_messages_name_its_variable():
    hostvars = with_host("m1", ray_node_ip="198.18.9.21")
    nodes = rp.ray_preflight_nodes_from(["m1", "bric"], hostvars, {"m1": "198.18.9.21", "bric": "198.18.9.134"})
    assert [(n["ip"], n["ip_var"]) for n in nodes] == [
        ("198.18.9.21", "ray_node_ip"), ("198.18.9.134", "cluster_address")]
    assert rp.ray_preflight_nodes_from(["bric"], HOSTVARS, {"bric": ""})[0]["ip"] is None


def test_duplicate_node_ip_names_both_hosts_and_the_variable():
    found = errors(with_host("m4", cluster_address="198.18.9.134"))
    assert found == ["m4: cluster_address 198.18.9.134 is also the node IP of bric; "
                     "every Ray node needs its own address"]


def test_head_count_must_be_one():
    assert "it holds no host" in errors(heads=())[0]
    assert "it holds m1, bric" in errors(heads=("m1", "bric"), workers=("m4",))[0]


def test_host_in_both_groups():
    assert "bric: is in both ray_head and ray_workers; pick one" in errors(
        heads=("bric",), workers=("bric", "m4", "m1"))


def test_missing_or_bad_values_name_host_and_variable():
    hv = with_host("bric", ray_num_gpus=-1)
    del hv["bric"]["cluster_address"]
    hv["m4"]["ray_num_cpus"] = "eight"
    found = errors(hv)
    assert any(e.startswith("bric: cluster_address is not set") for e in found)
    assert "bric: ray_num_gpus must be a whole number >= 0, not -1" in found
    assert "m4: ray_num_cpus must be a whole number >= 0, not 'eight'" in found
    assert errors(with_host("m1", cluster_address="not-an-ip")) == [
        "m1: cluster_address 'not-an-ip' is not an IP address"]


def test_digits_from_extra_vars_are_counts():
    assert errors(with_host("m1", ray_num_cpus="3")) == []


def test_resources_are_checked():
    found = errors(with_host("m4", ray_resources={"GPU": 1, "bad name": 1, "ok": "x"}))
    assert any("may not set 'GPU'" in e for e in found)
    assert any("name 'bad name' must match" in e for e in found)
    assert any("ray_resources['ok'] must be a number" in e for e in found)


def row(host, python="3.11.2", ray="2.60.0", target="2.60.0", venv=True, in_run=True):
    return {"host": host, "python": python, "python_path": "/opt/ray/venv/bin/python",
            "venv": venv, "ray_installed": ray, "ray_target": target, "in_run": in_run}


def test_matching_cluster_is_ok():
    result = rp.ray_preflight_version_table([row("w1"), row("head")], "head")
    assert result["ok"] and result["differences"] == []
    assert result["lines"][2].startswith("head ")  # the head comes first


def test_python_mismatch_is_reported_with_a_table():
    result = rp.ray_preflight_version_table(
        [row("head"), row("new", python="3.13.5", ray=None, venv=False)], "head")
    assert not result["ok"]
    assert result["differences"] == ["new: Python 3.13.5 != 3.11.2 (head head)"]
    header, rule, head, new = result["lines"]
    assert [c.strip() for c in header.split("|")] == ["host", "Ray", "Python", "differs from the head"]
    assert "(head)" in head
    assert "not installed - will install 2.60.0" in new and "Python 3.13.5 != 3.11.2" in new


def test_ray_mismatch_against_a_head_outside_the_run():
    head = row("head", ray="2.59.0", target="2.59.0", in_run=False)
    result = rp.ray_preflight_version_table([row("new", ray=None), head], "head")
    assert result["differences"] == ["new: Ray 2.60.0 != 2.59.0 (head head)"]
    assert "2.59.0 (not in this run)" in result["table"]


def test_head_outside_the_run_without_ray_is_an_error():
    head = row("head", ray=None, target=None, in_run=False)
    result = rp.ray_preflight_version_table([row("new", ray=None), head], "head")
    assert not result["ok"]
    assert any("has no Ray installed" in d for d in result["differences"])


def test_an_upgrade_in_place_is_not_a_difference():
    result = rp.ray_preflight_version_table(
        [row("head", ray="2.59.0"), row("w1", ray="2.59.0")], "head")
    assert result["ok"]
    assert "2.59.0 - will install 2.60.0" in result["table"]


def test_a_version_change_under_limit_is_refused_naming_the_hosts_left_out():
    result = rp.ray_preflight_version_table(
        [row("head", ray="2.59.0"), row("w1", ray="2.59.0")], "head", ["head", "w1", "w2"])
    assert not result["ok"]
    [why] = result["differences"]
    assert "head 2.59.0 -> 2.60.0, w1 2.59.0 -> 2.60.0" in why
    assert "leaves out w2 (--limit)" in why and "without --limit" in why


def test_a_version_change_on_every_node_is_not_refused():
    result = rp.ray_preflight_version_table(
        [row("head", ray="2.59.0"), row("w1", ray="2.59.0")], "head", ["head", "w1"])
    assert result["ok"], result["differences"]


def test_a_new_machine_under_limit_is_no_version_change():
    head = row("head", in_run=False)
    result = rp.ray_preflight_version_table([row("new", ray=None), head], "head", ["head", "w1", "new"])
    assert result["ok"], result["differences"]
