"""The verifiers' reading of INFO replication and ROLE, on replies captured
from real KeyDB 6.3.4 with three masters (worker/tests/fixtures/keydb/)."""

from __future__ import annotations

import json
import sys

from keydb_testlib import REPO

sys.path.insert(0, str(REPO / "molecule" / "keydb" / "tests"))
import keydb_replies as kr  # noqa: E402

FIXTURES = REPO / "worker" / "tests" / "fixtures" / "keydb"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode()


def test_fixtures_are_the_servers_bytes() -> None:
    text = fixture("info-replication-3-masters.txt")
    assert text.startswith("# Replication\r\n"), "captured as sent: CRLF line ends"
    assert "keydb" in (FIXTURES / "keydb-version.txt").read_text().lower()


def test_every_master_of_a_three_master_node_is_read() -> None:
    info = kr.parse_info(fixture("info-replication-3-masters.txt"))
    assert info["role"] == ["active-replica"]
    assert info["connected_masters"] == ["2"]
    links = kr.master_links(info)
    assert [link.endpoint for link in links] == ["127.0.0.1:17103", "127.0.0.1:17102"]
    assert [link.link_status for link in links] == ["up", "up"]
    assert not any(link.sync_in_progress for link in links)
    # Unprefixed fields repeat once per master: kept, not overwritten.
    assert len(info["slave_repl_offset"]) == 2
    assert kr.replicas(info) == {"127.0.0.1:17102": "online", "127.0.0.1:17103": "online"}
    assert kr.all_links_up(info, {"127.0.0.1:17102", "127.0.0.1:17103"})


def test_reading_only_master_host_would_miss_the_second_master() -> None:
    """What the old verifier did: master_host alone names one of two masters."""
    info = kr.parse_info(fixture("info-replication-3-masters.txt"))
    assert info["master_host"] == ["127.0.0.1"] and info["master_port"] == ["17103"]
    assert not kr.all_links_up(info, {"127.0.0.1:17103"})


def test_a_down_link_is_seen_whichever_master_it_is() -> None:
    info = kr.parse_info(fixture("info-replication-3-masters-one-down.txt"))
    links = {link.endpoint: link.link_status for link in kr.master_links(info)}
    assert links == {"127.0.0.1:17103": "down", "127.0.0.1:17102": "up"}
    assert info["master_global_link_status"] == ["down"]
    assert not kr.all_links_up(info, {"127.0.0.1:17102", "127.0.0.1:17103"})
    assert not kr.all_links_up(info, {"127.0.0.1:17102"})


def test_role_lists_one_active_replica_entry_per_master() -> None:
    entries = kr.parse_role(json.loads(fixture("role-3-masters.json")))
    assert [(e.role, e.host, e.port, e.state) for e in entries] == [
        ("active-replica", "127.0.0.1", 17103, "connected"),
        ("active-replica", "127.0.0.1", 17102, "connected"),
    ]
    down = kr.parse_role(json.loads(fixture("role-3-masters-one-down.json")))
    assert [(e.port, e.state, e.offset) for e in down] == [(17103, "connect", -1), (17102, "connected", 607)]


def _cli_lines(reply) -> str:
    """What keydb-cli prints off a terminal: every leaf on its own line."""
    if isinstance(reply, list):
        return "".join(_cli_lines(item) for item in reply)
    return f"{reply}\n"


def test_role_from_the_clients_flat_output() -> None:
    for name in ("role-3-masters.json", "role-3-masters-one-down.json"):
        reply = json.loads(fixture(name))
        assert kr.role_from_cli(_cli_lines(reply)) == reply


def test_redis_and_valkey_shapes() -> None:
    """One master at most; ROLE flat for a replica, nested for a primary."""
    replica = "role:slave\r\nmaster_host:198.18.0.11\r\nmaster_port:6379\r\nmaster_link_status:up\r\n"
    assert kr.all_links_up(replica, {"198.18.0.11:6379"})
    assert kr.parse_role(["slave", "198.18.0.11", 6379, "connected", 5]) == [
        kr.RoleEntry("slave", "198.18.0.11", 6379, "connected", 5)]
    assert kr.parse_role(["master", 5, [["198.18.0.12", "6379", "5"]]]) == []
    assert kr.role_from_cli("master\n5\n198.18.0.12\n6379\n5\n") == ["master", 5, [["198.18.0.12", "6379", "5"]]]
