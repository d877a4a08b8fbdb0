"""The report's cache: each journal's :class:`~hpo_worker.report.Tally` saved as JSON, so
the next ``hpo-worker report`` replays only the entries appended since.

A saved tally is used only when all of these still hold, else the journal is replayed
whole (and the cache rewritten):

- the same code (a digest of the replay and report modules) and file format;
- the same store (namespace and endpoints) and the same writer: its record (epoch and
  endpoint) as the election read it; a failover changes the record;
- the journal still holds, at the same places, the first entry and the last entry the
  tally replayed (read in one MULTI with the first new entries). A journal that shrank
  or changed (a standby promoted without the last entries, a master resynced from a
  peer) fails this; it is the test every journal write makes (``store._GUARD``).

Location: ``$HPO_CACHE_DIR``, else ``$XDG_CACHE_HOME/hpo-worker``, else
``~/.cache/hpo-worker``; one file per journal, mode 0600. It holds the per-host
durations and the open trials, no password. A cache that cannot be read or written is
skipped (the report is then read whole, as with ``--no-cache``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from .journal import Replay

log = logging.getLogger("hpo_worker.report_cache")

FORMAT = 1
_HERE = Path(__file__).resolve().parent
_CODE: str | None = None


def code_digest() -> str:
    """Digest of the code that makes a tally: a saved tally of other code is not used."""
    global _CODE
    if _CODE is None:
        h = hashlib.sha256()
        for name in ("journal.py", "report.py", "report_cache.py"):
            h.update((_HERE / name).read_bytes())
        _CODE = h.hexdigest()[:16]
    return _CODE


def default_dir() -> Path:
    if os.environ.get("HPO_CACHE_DIR"):
        return Path(os.environ["HPO_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hpo-worker"


class ReportCache:
    """Saved tallies of one store's journals, valid under one writer record (``source``)."""

    def __init__(self, directory: Path, store_id: str, source: str) -> None:
        self.dir = Path(directory)
        self.store_id = store_id  # namespace and endpoints: which store
        self.source = source      # the writer's record and endpoint: which copy of it

    def path(self, key: str) -> Path:
        digest = hashlib.sha256(f"{self.store_id}\0{key}".encode()).hexdigest()[:24]
        return self.dir / f"report-{digest}.json"

    def load(self, key: str):  # -> Tally | None
        from .report import Tally

        try:
            d = json.loads(self.path(key).read_text())
            if (d.get("format"), d.get("code"), d.get("store"), d.get("key")) != \
                    (FORMAT, code_digest(), self.store_id, key):
                log.debug("%s: cache of other code or another store: replayed whole", key)
                return None
            if d.get("source") != self.source:
                log.debug("%s: cache made under writer %r, the writer is %r now: replayed whole", key,
                          d.get("source"), self.source)
                return None
            return Tally(Replay.restore(d["replay"]), d["counts"], d["durations"], int(d["pos"]), d["first"],
                         d["last"], d["memory"])
        except FileNotFoundError:
            log.debug("%s: not in the cache: replayed whole", key)
            return None
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            log.debug("report cache %s not used: %r", self.path(key), exc)
            return None

    def save(self, key: str, tally) -> None:
        d = {"format": FORMAT, "code": code_digest(), "store": self.store_id, "source": self.source, "key": key,
             "pos": tally.pos, "first": tally.first, "last": tally.last, "counts": tally.counts,
             "durations": tally.durations, "memory": tally.memory, "replay": tally.replay.snapshot()}
        path = self.path(key)
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".report-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(d, separators=(",", ":")))  # dumps: the C encoder (dump streams in Python)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            log.debug("report cache %s not written: %r", path, exc)
