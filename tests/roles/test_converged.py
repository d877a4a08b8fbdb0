"""roles/converged: the node script (files/converged.py) and the controller's
digest (filter_plugins/converged.py), run here on real files.

The node-side checks that need systemd (units active and enabled) run on the
test bed, in the cluster scenario (molecule/cluster/tests/test_rerun.py);
here the stamps carry no units.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROLE = Path(__file__).resolve().parents[2] / "roles" / "converged"
SCRIPT = ROLE / "files" / "converged.py"


def load_filter():
    spec = importlib.util.spec_from_file_location("converged_filter", ROLE / "filter_plugins" / "converged.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args: str) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_a_stamp_matches_until_a_file_or_the_digest_changes(tmp_path):
    stamp = tmp_path / "state" / "keydb.json"
    conf = tmp_path / "etc" / "keydb.conf"
    conf.parent.mkdir()
    conf.write_text("port 6379\n")
    dropins = tmp_path / "dropins"
    dropins.mkdir()
    (dropins / "a.conf").write_text("[Service]\n")
    absent = tmp_path / "legacy"

    assert run("check", str(stamp), "d1")["reason"] == "no stamp of a full run"
    run("write", str(stamp), "d1", "--path", str(conf), "--path", str(dropins), "--path", str(absent))
    assert oct(stamp.stat().st_mode & 0o777) == "0o600"
    assert run("check", str(stamp), "d1") == {"converged": True, "reason": "as its last full run left it"}

    assert run("check", str(stamp), "d2")["reason"] == "the role's inputs changed since its last full run"
    conf.chmod(0o600)
    assert run("check", str(stamp), "d1")["reason"] == f"{conf} changed since the last full run"
    conf.chmod(0o644)
    conf.write_text("port 6380\n")
    assert not run("check", str(stamp), "d1")["converged"]
    conf.write_text("port 6379\n")
    (dropins / "b.conf").write_text("")  # a file added to a recorded directory
    assert run("check", str(stamp), "d1")["reason"] == f"{dropins / 'b.conf'} changed since the last full run"
    (dropins / "b.conf").unlink()
    absent.write_text("back")  # a path that was absent must stay absent
    assert run("check", str(stamp), "d1")["reason"] == f"{absent} changed since the last full run"
    absent.unlink()
    assert run("check", str(stamp), "d1")["converged"]


def test_forget_removes_a_stamp_that_does_not_match(tmp_path):
    stamp = tmp_path / "ray.json"
    run("write", str(stamp), "d1")
    assert run("check", str(stamp), "d1", "--forget")["converged"]
    assert stamp.exists(), "a matching stamp stays"
    assert not run("check", str(stamp), "other", "--forget")["converged"]
    assert not stamp.exists(), "a full run that fails half-way must not find the old stamp"
    assert run("check", str(stamp), "d1")["reason"] == "no stamp of a full run"


def test_the_probe_must_exit_0_and_match(tmp_path):
    stamp = tmp_path / "ray.json"
    run("write", str(stamp), "d1")
    alive = ["--expect", '"state": "alive"', "--probe", "sh", "-c"]
    assert run("check", str(stamp), "d1", *alive, 'echo \'{"state": "alive"}\'')["converged"]
    dead = run("check", str(stamp), "d1", *alive, 'echo \'{"state": "not alive"}\'')
    assert not dead["converged"] and dead["reason"].startswith("probe: exit 0")
    assert not run("check", str(stamp), "d1", *alive, 'echo \'{"state": "alive"}\'; exit 3')["converged"]


def test_the_digest_follows_public_variables_peers_and_files(tmp_path):
    digest = load_filter().converged_digest
    role = tmp_path / "code.tar"
    role.write_bytes(b"one")
    own = {"keydb_port": 6379, "_keydb_result": {"stdout": "run-specific"}, "ansible_host": "x",
           "omit": "__omit_place_holder__123", "converged_paths": ["/etc/a"]}
    hostvars = {"a": {"cluster_address": "198.18.0.1"}, "b": {"cluster_address": "198.18.0.2"}}
    groups = {"all": ["a", "b"], "keydb": ["a", "b"]}
    base = digest(own, hostvars, groups, [str(role)])

    # Registered results, connection settings, the per-run omit token and the
    # check's own arguments are not inputs.
    same = dict(own, _keydb_result={"stdout": "other"}, ansible_host="y", omit="__omit_place_holder__9",
                converged_paths=["/etc/b"])
    assert digest(same, hostvars, groups, [str(role)]) == base
    assert digest(dict(own, keydb_port=6380), hostvars, groups, [str(role)]) != base
    moved = {"a": hostvars["a"], "b": {"cluster_address": "198.18.0.3"}}
    assert digest(own, moved, groups, [str(role)]) != base, "a peer's address is an input"
    assert digest(own, hostvars, {**groups, "keydb": ["a"]}, [str(role)]) != base
    role.write_bytes(b"two")
    assert digest(own, hostvars, groups, [str(role)]) != base
    # A role by name: its directory beside roles/converged.
    assert digest(own, hostvars, groups, ["converged"]) == digest(own, hostvars, groups, ["converged"])
