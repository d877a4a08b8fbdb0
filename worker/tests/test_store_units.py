"""Pure functions of the store module (no server needed).

KeyDB cannot be installed here (its repository is unreachable), so the ROLE
replies below are written from KeyDB 6.3's source (replication.cpp,
roleCommand): an active replica answers "active-replica", and with more than
one master configured, a list of such entries.
"""

import pytest
from hpo_worker.store import parse_endpoints, parse_record, role_kind


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
