"""A small Redis client for the read-only commands (``report``, ``trials``).

RESP over one socket, replies parsed by ``hiredis`` (the C parser redis-py uses too,
a pinned dependency). Importing redis-py costs ~0.15 s (it imports ``asyncio``, its
cluster, sentinel and metrics modules whatever client is used): more than replaying a
cached report. The workers keep redis-py; this client only reads: GET, ROLE, SMEMBERS,
LRANGE, LINDEX, and a pipeline of them, optionally in one MULTI/EXEC.
"""

from __future__ import annotations

import socket
from typing import Any

import hiredis


class RespError(Exception):
    """Any failure of this client."""


class Unreachable(RespError):
    """The server could not be reached, or the connection failed or timed out."""


class ReplyError(RespError):
    """The server answered with an error reply."""


class AuthError(ReplyError):
    """The server refused the user or password."""


class Client:
    """One connection (opened on first use) to a Redis or KeyDB server, replies decoded as UTF-8."""

    def __init__(self, host: str, port: int, username: str | None = None, password: str | None = None,
                 connect_timeout: float = 2.0, timeout: float = 5.0) -> None:
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self._sock: socket.socket | None = None
        self._reader: Any = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout
        if self._sock is not None:
            self._sock.settimeout(timeout)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise Unreachable(f"{self.endpoint}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.timeout)
        self._sock = sock
        self._reader = hiredis.Reader(encoding="utf-8", replyError=ReplyError)
        if self.password is not None or self.username is not None:
            auth = ["AUTH", self.username, self.password or ""] if self.username else ["AUTH", self.password]
            reply = self._roundtrip([auth])[0]
            if isinstance(reply, ReplyError):
                self.close()
                raise AuthError(str(reply))

    def _roundtrip(self, commands: list[list[Any]]) -> list[Any]:
        """Send every command at once, then read one reply per command (error replies as ReplyError)."""
        if self._sock is None:
            self._connect()
        sock, reader = self._sock, self._reader
        try:
            sock.sendall(b"".join(hiredis.pack_command(tuple(c)) for c in commands))
            out: list[Any] = []
            while len(out) < len(commands):
                reply = reader.gets()
                if reply is False:  # incomplete: read more
                    data = sock.recv(1 << 20)
                    if not data:
                        raise Unreachable(f"{self.endpoint}: connection closed by the server")
                    reader.feed(data)
                    continue
                out.append(reply)
            return out
        except OSError as exc:  # socket.timeout is an OSError
            self.close()
            raise Unreachable(f"{self.endpoint}: {exc!r}") from None
        except hiredis.ProtocolError as exc:
            self.close()
            raise Unreachable(f"{self.endpoint}: protocol error: {exc}") from None
        except Unreachable:
            self.close()
            raise

    def execute_command(self, *args: Any) -> Any:
        reply = self._roundtrip([list(args)])[0]
        if isinstance(reply, ReplyError):
            raise _refined(reply)
        return reply

    def get(self, key: str) -> str | None:
        return self.execute_command("GET", key)

    def smembers(self, key: str) -> set[str]:
        return set(self.execute_command("SMEMBERS", key))

    def lrange(self, key: str, start: int, end: int) -> list[str]:
        return self.execute_command("LRANGE", key, start, end)

    def lindex(self, key: str, index: int) -> str | None:
        return self.execute_command("LINDEX", key, index)

    def pipeline(self, transaction: bool = False) -> Pipeline:
        return Pipeline(self, transaction)


class Pipeline:
    """Commands sent in one write and answered in order (as redis-py's pipeline); with
    ``transaction`` wrapped in MULTI/EXEC, so the server runs them as one."""

    def __init__(self, client: Client, transaction: bool) -> None:
        self.client = client
        self.transaction = transaction
        self.commands: list[list[Any]] = []

    def execute_command(self, *args: Any) -> Pipeline:
        self.commands.append(list(args))
        return self

    def get(self, key: str) -> Pipeline:
        return self.execute_command("GET", key)

    def lrange(self, key: str, start: int, end: int) -> Pipeline:
        return self.execute_command("LRANGE", key, start, end)

    def lindex(self, key: str, index: int) -> Pipeline:
        return self.execute_command("LINDEX", key, index)

    def execute(self) -> list[Any]:
        cmds, self.commands = self.commands, []
        if self.transaction:
            replies = self.client._roundtrip([["MULTI"], *cmds, ["EXEC"]])
            for r in replies[:-1]:
                if isinstance(r, ReplyError):
                    raise _refined(r)
            replies = replies[-1]
            if replies is None:
                raise ReplyError("EXEC: the transaction was aborted")
        else:
            replies = self.client._roundtrip(cmds)
        for r in replies:
            if isinstance(r, ReplyError):
                raise _refined(r)
        return replies


def _refined(reply: ReplyError) -> ReplyError:
    text = str(reply)
    if text.startswith(("NOAUTH", "WRONGPASS")):
        return AuthError(text)
    return reply
