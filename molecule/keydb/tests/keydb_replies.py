"""Read KeyDB's (and Redis's / Valkey's) replication replies as they really are.

KeyDB with several masters (`active-replica yes`, `multi-master yes`) reports
in `INFO replication` the first master as `master_host`, `master_port`,
`master_link_status`, `master_sync_in_progress`, ... and the next ones as
`master_1_host`, `master_1_port`, `master_1_link_status`, ... (some fields,
such as `slave_repl_offset`, repeat unprefixed once per master). `ROLE`
answers one `[active-replica, host, port, state, offset]` entry per master.
Redis and Valkey answer with one master at most (`master_host`, ...) and
`ROLE` as `[master, offset, [[ip, port, offset], ...]]` or
`[slave, host, port, state, offset]`.

Used by the molecule verifiers and by tests/keydb (node-free, on replies
captured from real servers: worker/tests/fixtures/keydb/).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SLAVE = re.compile(r"slave\d+")


def parse_info(text: str) -> dict[str, list[str]]:
    """INFO output as {field: [values]}; a field repeated in the reply (one per
    master with KeyDB multi-master) keeps every value in order."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key, []).append(value)
    return fields


@dataclass(frozen=True)
class MasterLink:
    host: str
    port: int
    link_status: str
    sync_in_progress: bool

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


def master_links(info: dict[str, list[str]] | str) -> list[MasterLink]:
    """Every master this server replicates from, in the server's order:
    `master_*` first, then `master_1_*`, `master_2_*`, ..."""
    if isinstance(info, str):
        info = parse_info(info)
    links = []
    index = 0
    while True:
        prefix = "master_" if index == 0 else f"master_{index}_"
        host = info.get(f"{prefix}host")
        if not host:
            return links
        links.append(MasterLink(
            host=host[0],
            port=int(info[f"{prefix}port"][0]),
            link_status=info.get(f"{prefix}link_status", [""])[0],
            sync_in_progress=info.get(f"{prefix}sync_in_progress", ["0"])[0] == "1",
        ))
        index += 1


def replicas(info: dict[str, list[str]] | str) -> dict[str, str]:
    """Connected replicas as {"ip:port": state} from the `slaveN:` lines."""
    if isinstance(info, str):
        info = parse_info(info)
    out = {}
    for key, values in info.items():
        if _SLAVE.fullmatch(key):
            attrs = dict(item.split("=", 1) for item in values[0].split(",") if "=" in item)
            out[f"{attrs.get('ip')}:{attrs.get('port')}"] = attrs.get("state", "")
    return out


def all_links_up(info: dict[str, list[str]] | str, expected: set[str]) -> bool:
    """True when this server replicates from exactly `expected` ("host:port")
    and every one of those links is up and not in a full sync."""
    if isinstance(info, str):
        info = parse_info(info)
    links = master_links(info)
    return (
        {link.endpoint for link in links} == expected
        and len(links) == len(expected)
        and all(link.link_status == "up" and not link.sync_in_progress for link in links)
        and (len(links) < 2 or info.get("master_global_link_status") == ["up"])
    )


@dataclass(frozen=True)
class RoleEntry:
    role: str  # "active-replica", "slave", "master"
    host: str
    port: int
    state: str
    offset: int


def parse_role(reply: list) -> list[RoleEntry]:
    """ROLE as a list of master links (empty for a plain master).

    KeyDB with several masters answers a list of 5-element lists; a Redis or
    Valkey replica answers one flat 5-element list; a master answers
    [master, offset, [[ip, port, offset], ...]]."""
    if not reply:
        return []
    if isinstance(reply[0], list):
        return [RoleEntry(str(r[0]), str(r[1]), int(r[2]), str(r[3]), int(r[4])) for r in reply]
    if reply[0] in ("slave", "replica", "active-replica"):
        return [RoleEntry(str(reply[0]), str(reply[1]), int(reply[2]), str(reply[3]), int(reply[4]))]
    return []


def role_from_cli(text: str) -> list:
    """Rebuild ROLE's nested reply from keydb-cli/redis-cli/valkey-cli output
    off a terminal, which prints every element of the nested arrays on its
    own line."""
    items = [line.strip() for line in text.splitlines() if line.strip()]
    if not items:
        return []
    if items[0] == "active-replica":
        return [[e[0], e[1], int(e[2]), e[3], int(e[4])] for e in (items[i:i + 5] for i in range(0, len(items), 5))]
    if items[0] in ("slave", "replica"):
        return [items[0], items[1], int(items[2]), items[3], int(items[4])]
    if items[0] == "master":
        rest = items[2:]
        return ["master", int(items[1]), [[rest[i], rest[i + 1], rest[i + 2]] for i in range(0, len(rest), 3)]]
    return items
