"""Who the writer of a master group is: the rules, on what each master says (a :class:`Probe`).

No Redis client here: :class:`hpo_worker.store.Store` (redis-py, the workers) and
:class:`hpo_worker.reader.ReadOnlyStore` (the read-only commands) ask the masters
and both decide with these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CONNECT_TIMEOUT = 2.0
AUTH_HINT = "set HPO_KEYDB_USERNAME and HPO_KEYDB_PASSWORD"
SOCKET_TIMEOUT = 5.0
# A probe asks three cheap questions; a master that takes longer than this to answer
# them is treated as unreachable for this look (a host that hung or lost power).
PROBE_TIMEOUT = 2.0


class StoreAuthError(RuntimeError):
    """A master refused our password (or we sent none)."""


class NoWriter(RuntimeError):
    """No master of the group is reachable."""


def parse_endpoints(text: str) -> list[str]:
    """'host:port,host:port' -> list; errors name the bad item."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--endpoints / HPO_KEYDB_ENDPOINTS: {item!r} is not host:port")
        out.append(f"{host}:{int(port)}")
    if not out:
        raise ValueError("--endpoints / HPO_KEYDB_ENDPOINTS: no endpoint given (comma-separated host:port)")
    if len(set(out)) != len(out):
        raise ValueError("--endpoints / HPO_KEYDB_ENDPOINTS: an endpoint is listed twice")
    return out


def parse_record(rec: str | None) -> tuple[int, str]:
    if not rec:
        return (-1, "")
    epoch, _, ep = rec.partition(" ")
    try:
        return (int(epoch), ep)
    except ValueError:
        return (-1, "")


def role_kind(role: Any) -> str:
    """'master' for a node that accepts writes, 'replica' for a read-only one.

    Redis answers ROLE with ["master", ...] or ["slave", ...]. A KeyDB active
    replica answers ["active-replica", host, port, state, offset] and, with
    more than one master configured, a list of such lists: it accepts writes.
    """
    if not role:
        return "master"
    first = role[0]
    if isinstance(first, (list, tuple)):
        first = first[0] if first else "master"
    if isinstance(first, bytes):
        first = first.decode()
    return "master" if first in ("master", "active-replica") else "replica"


@dataclass(frozen=True)
class Probe:
    """What one master says about the group: its writer record, its role, its progress."""

    endpoint: str
    epoch: int        # -1: no record
    named: str        # the endpoint the record names
    record: str | None
    role: str         # 'master' (accepts writes) or 'replica'
    seq: int          # journal entries ever appended (NS:seq)

    @classmethod
    def of(cls, endpoint: str, record: str | None, role: Any, seq: str | None) -> Probe:
        """From the replies to GET NS:writer, ROLE, GET NS:seq."""
        epoch, named = parse_record(record)
        return cls(endpoint, epoch, named, record, role_kind(role), int(seq or 0))


def writer_of(reachable: dict[str, Probe]) -> tuple[str, str] | None:
    """(endpoint, record) of the writer, if the reachable masters agree on one."""
    if not reachable:
        return None
    best = max(p.epoch for p in reachable.values())
    if best < 0:
        return None
    records = {p.record for p in reachable.values() if p.epoch == best}
    if len(records) != 1:
        return None  # two records at one epoch: promotions raced (or were crossed by replication)
    rec = records.pop()
    named = parse_record(rec)[1]
    holder = reachable.get(named)
    if holder is None or holder.record != rec or holder.role != "master":
        return None
    return named, rec


def candidates(reachable: dict[str, Probe], replicas_too: bool) -> list[Probe]:
    """Masters a promotion may pick, best first; the same order for every worker."""
    best = max(p.epoch for p in reachable.values())
    top = [p for p in reachable.values() if p.epoch == best and (p.role == "master" or replicas_too)]
    return sorted(top, key=lambda p: (p.role != "master", -p.seq, p.endpoint))


def read_only_choice(reachable: dict[str, Probe]) -> tuple[str, str] | None:
    """Where a reader reads, writing nothing: (endpoint, record) of the writer if the masters
    agree on one, else the master a promotion would pick, with record ''."""
    if not reachable:
        return None
    found = writer_of(reachable)
    if found is not None:
        return found
    return candidates(reachable, replicas_too=True)[0].endpoint, ""
