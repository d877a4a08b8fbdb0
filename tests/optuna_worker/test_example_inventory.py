"""inventory/example mirrors the user's cluster (notes: m1 head 10.147.19.20
with 3 CPUs and 1 GPU, bric 3 CPUs, m4 8 CPUs; KeyDB on two machines) and
parses with ansible-inventory. Its addresses are documentation only: no
test contacts them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def inventory() -> dict:
    tool = Path(sys.executable).parent / "ansible-inventory"
    out = subprocess.run([str(tool), "-i", "inventory/example", "--list"], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return json.loads(out)


def test_example_inventory_mirrors_the_notes() -> None:
    data = inventory()
    hostvars = data["_meta"]["hostvars"]
    assert data["ray_head"]["hosts"] == ["m1"]
    assert sorted(data["ray_workers"]["hosts"]) == ["bric", "m4"]
    assert len(data["keydb"]["hosts"]) == 2
    assert sorted(data["optuna_workers"]["hosts"]) == ["bric", "m1", "m4"]
    expected = {"m1": ("10.147.19.20", 3, 1), "bric": ("10.147.19.134", 3, 0), "m4": ("10.147.19.230", 8, 0)}
    for host, (address, cpus, gpus) in expected.items():
        v = hostvars[host]
        assert (v["cluster_address"], v["ray_num_cpus"], v["ray_num_gpus"]) == (address, cpus, gpus), host
    # The password is not in the repository: it comes from the vault file.
    assert hostvars["m1"]["keydb_password"] == "{{ vault_keydb_password }}"
    assert hostvars["m1"]["ray_auth_token"] == "{{ vault_ray_auth_token }}"
    assert not (REPO / "inventory/example/group_vars/all/vault.yml").exists()
