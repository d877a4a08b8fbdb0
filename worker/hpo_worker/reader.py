"""The store as the read-only commands (``report``, ``trials``) see it: no redis-py import.

Finds the master to read from with the election's rules (:mod:`hpo_worker.election`),
writing nothing: the writer when the masters agree on one, else the master a
promotion would pick (as ``Store.elect(promote=False)``).
"""

from __future__ import annotations

import logging
import threading
import time

from .election import (
    AUTH_HINT,
    CONNECT_TIMEOUT,
    PROBE_TIMEOUT,
    SOCKET_TIMEOUT,
    NoWriter,
    Probe,
    StoreAuthError,
    parse_record,
    read_only_choice,
)
from .resp import AuthError, Client, ReplyError, Unreachable

log = logging.getLogger("hpo_worker.reader")


class ReadOnlyStore:
    """The masters of a group, read with :class:`hpo_worker.resp.Client`; nothing is written."""

    def __init__(self, endpoints: list[str], password: str | None = None, namespace: str = "hpo",
                 username: str | None = None) -> None:
        self.endpoints = list(endpoints)
        self.ns = namespace
        self.k_writer = f"{namespace}:writer"
        self.k_studies = f"{namespace}:studies"
        self.k_seq = f"{namespace}:seq"
        self._clients = {}
        for ep in self.endpoints:
            host, _, port = ep.rpartition(":")
            self._clients[ep] = Client(host, int(port), username=username, password=password,
                                       connect_timeout=CONNECT_TIMEOUT, timeout=PROBE_TIMEOUT)
        self.record = ""  # the writer record the masters agree on ('' when none)
        self.writer: Client | None = None  # the master read from

    def journal_key(self, study: str) -> str:
        return f"{self.ns}:journal:{study}"

    @property
    def writer_endpoint(self) -> str:
        return parse_record(self.record)[1]

    def writer_endpoint_now(self) -> str:
        return self.writer.endpoint if self.writer is not None else ""

    def close(self) -> None:
        for c in self._clients.values():
            c.close()

    def _probe(self, endpoint: str) -> Probe | None:
        try:
            pipe = self._clients[endpoint].pipeline()
            return Probe.of(endpoint, *pipe.get(self.k_writer).execute_command("ROLE").get(self.k_seq).execute())
        except AuthError as exc:
            raise StoreAuthError(f"{endpoint} refused the user or password ({AUTH_HINT}): {exc}") from None
        except (Unreachable, ReplyError) as exc:
            log.warning("endpoint %s unreachable: %s", endpoint, exc)
            return None

    def _probe_all(self) -> dict[str, Probe]:
        if len(self.endpoints) == 1:
            probes = [self._probe(self.endpoints[0])]
        else:
            probes = [None] * len(self.endpoints)
            errors: list[BaseException] = []

            def one(i: int, ep: str) -> None:
                try:
                    probes[i] = self._probe(ep)
                except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
                    errors.append(exc)

            threads = [threading.Thread(target=one, args=(i, ep), daemon=True) for i, ep in enumerate(self.endpoints)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
        return {ep: p for ep, p in zip(self.endpoints, probes) if p is not None}

    def elect(self, wait: float = 10.0, promote: bool = False) -> str:
        """Pick the master to read (see the module); waits up to ``wait`` s for one to answer."""
        if promote:
            raise ValueError("ReadOnlyStore never promotes")
        deadline = time.monotonic() + wait
        delay = 0.2
        while True:
            found = read_only_choice(self._probe_all())
            if found is not None:
                endpoint, self.record = found
                self.writer = self._clients[endpoint]
                self.writer.settimeout(SOCKET_TIMEOUT)
                return self.record
            if time.monotonic() > deadline:
                raise NoWriter(f"no master reachable among {', '.join(self.endpoints)}")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
