"""Pure functions of the store module (no server needed).

The KeyDB replies are those of the real server (KeyDB 6.3.4 from its own
packages, three active replicas), captured into tests/fixtures/keydb/ (see
its README); the Redis shapes are Redis's documented ROLE replies.
"""

import json
from pathlib import Path

import pytest
from hpo_worker.store import REPLICA_LAG_MAX, live_replicas, parse_endpoints, parse_record, role_kind

KEYDB = Path(__file__).parent / "fixtures" / "keydb"


@pytest.mark.parametrize("name", ["role-3-masters.json", "role-3-masters-one-down.json"])
def test_real_keydb_role_replies_are_writable_masters(name):
    reply = json.loads((KEYDB / name).read_text())
    assert len(reply) == 2 and all(entry[0] == "active-replica" for entry in reply)
    assert role_kind(reply) == "master"


def test_real_keydb_info_replication_counts_its_peers_as_replicas():
    """The worker's WAIT uses connected_slaves: KeyDB counts each active-replica peer there."""
    from redis._parsers.helpers import parse_info

    info = parse_info((KEYDB / "info-replication-3-masters.txt").read_text())
    assert info["role"] == "active-replica"
    assert int(info["connected_slaves"]) == 2
    assert live_replicas(info) == 2


def test_a_replica_not_heard_from_is_not_waited_for():
    """From the real reply: a peer whose last acknowledgement is older than REPLICA_LAG_MAX
    (one that lost power stays listed until repl-timeout) is not counted for WAIT."""
    from redis._parsers.helpers import parse_info

    text = (KEYDB / "info-replication-3-masters.txt").read_text()
    info = parse_info(text)
    assert live_replicas(info) == 2
    first = info["slave0"]
    stale = text.replace(f"lag={first['lag']}", f"lag={REPLICA_LAG_MAX + 7}", 1)
    assert live_replicas(parse_info(stale)) == 1
    assert live_replicas(parse_info(text.replace("state=online", "state=wait_bgsave", 1))) == 1


@pytest.mark.parametrize("reply, kind", [
    (["master", 123, []], "master"),
    (["slave", "127.0.0.1", 6379, "connected", 99], "replica"),
    ([b"slave", b"127.0.0.1", 6379, b"connected", 99], "replica"),
    (["active-replica", "198.18.0.12", 6379, "connected", 10], "master"),
    ([["active-replica", "198.18.0.12", 6379, "connected", 10],
      ["active-replica", "198.18.0.13", 6379, "connect", -1]], "master"),
    ([], "master"),
])
def test_role_kind_accepts_keydb_active_replicas_as_writable(reply, kind):
    assert role_kind(reply) == kind


def test_parse_endpoints_names_the_bad_item():
    assert parse_endpoints(" 198.18.0.11:6379, 198.18.0.12:6380 ") == ["198.18.0.11:6379", "198.18.0.12:6380"]
    with pytest.raises(ValueError, match="'nohost' is not host:port"):
        parse_endpoints("198.18.0.11:6379,nohost")
    with pytest.raises(ValueError, match="listed twice"):
        parse_endpoints("a:1,a:1")
    with pytest.raises(ValueError, match="no endpoint"):
        parse_endpoints(" , ")


def test_parse_record():
    assert parse_record("7 198.18.0.12:6379") == (7, "198.18.0.12:6379")
    assert parse_record(None) == (-1, "")
    assert parse_record("garbage") == (-1, "")
