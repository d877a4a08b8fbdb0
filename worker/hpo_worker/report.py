"""Per-host performance table, read straight from the journal (no Optuna replay).

For each study: its COMPLETE count, then one line per host with the mean and
median duration of the trials that host evaluated and their count, fastest
first. Trials that took a value from an identical COMPLETE trial (duplicate
guard) count as COMPLETE but not as evaluations. When trials carry a peak
memory (spec ``worker.memray``: ``peak_memory_bytes`` in the ``hpo`` attr),
each host line also gives the largest and the median peak of its trials.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .journal import (
    COMPLETE,
    FAIL,
    PRUNED,
    READ_CHUNK,
    RETIRED,
    RUNNING,
    STATE_NAMES,
    WAITING,
    Replay,
    Trial,
    iter_journal,
)

if TYPE_CHECKING:
    from .report_cache import ReportCache

log = logging.getLogger("hpo_worker.report")


@dataclass
class HostRow:
    host: str
    mean: float
    median: float
    count: int
    peak_max: int | None = None     # bytes: the largest peak memory of the host's trials (memray)
    peak_median: float | None = None
    peak_count: int = 0             # trials of the host that carry a peak


@dataclass
class StudyReport:
    study_id: int
    name: str
    counts: dict[str, int] = field(default_factory=dict)
    hosts: list[HostRow] = field(default_factory=list)


def _zero_counts() -> dict[str, int]:
    return {"COMPLETE": 0, "evaluated": 0, "reused": 0, "duplicate_running": 0, "FAIL": 0, "RUNNING": 0,
            "WAITING": 0}


class Tally:
    """One journal replayed up to ``pos`` entries, its finished trials folded into per-study
    counts and per-host durations (and retired from the replay: they never change again).
    :meth:`feed` goes on from where it stopped; the open (RUNNING, WAITING) trials are counted
    when the report is made. The report's cache is this object as JSON (:mod:`hpo_worker.report_cache`).
    """

    def __init__(self, replay: Replay | None = None, counts: list[dict[str, int]] | None = None,
                 durations: list[dict[str, list[float]]] | None = None, pos: int = 0, first: str = "",
                 last: str = "", memory: list[dict[str, list[int]]] | None = None) -> None:
        self.replay = replay if replay is not None else Replay()
        self.counts = counts if counts is not None else []          # per study id: finished trials
        self.durations = durations if durations is not None else []  # per study id: host -> seconds
        self.memory = memory if memory is not None else []  # per study id: host -> peak bytes (memray)
        self.pos = pos        # journal entries replayed
        self.first = first    # the first of them and the last: how a cache knows the journal is the same
        self.last = last

    def feed(self, raws: list[str]) -> Tally:
        if not raws:
            return self
        if self.pos == 0:
            self.first = raws[0]
        self.replay.feed(raws)
        self.pos += len(raws)
        self.last = raws[-1]
        self.replay.retire(self._fold)
        return self

    def _fold(self, t: Trial) -> None:
        while len(self.counts) <= t.study:
            self.counts.append(_zero_counts())
            self.durations.append({})
        c = self.counts[t.study]
        h = t.hpo or {}
        if t.state == COMPLETE:
            c["COMPLETE"] += 1
            if "reused_from" in h:
                c["reused"] += 1
            elif t.start and t.complete:
                c["evaluated"] += 1
                parse = datetime.fromisoformat
                d = (parse(t.complete) - parse(t.start)).total_seconds()
                self.durations[t.study].setdefault(str(h.get("host", "?")), []).append(d)
                peak = h.get("peak_memory_bytes")
                if isinstance(peak, int) and not isinstance(peak, bool):
                    while len(self.memory) <= t.study:
                        self.memory.append({})
                    self.memory[t.study].setdefault(str(h.get("host", "?")), []).append(peak)
        elif t.state == PRUNED and "duplicate_of" in h:
            c["duplicate_running"] += 1
        elif t.state == FAIL:
            c["FAIL"] += 1

    def reports(self, study: str | None = None) -> list[StudyReport]:
        """The table of every study of this journal, or of ``study`` only (KeyError if unknown)."""
        replay = self.replay
        wanted = replay.study_id(study) if study is not None else None
        if study is not None and wanted is None:
            raise KeyError(study)
        out = []
        for sid, name in enumerate(replay.study_names):
            if wanted is not None and sid != wanted:
                continue
            r = StudyReport(sid, name, dict(self.counts[sid]) if sid < len(self.counts) else _zero_counts())
            hosts = self.durations[sid] if sid < len(self.durations) else {}
            memory = self.memory[sid] if sid < len(self.memory) else {}
            r.hosts = sorted((HostRow(h, statistics.fmean(v), statistics.median(v), len(v))
                              for h, v in hosts.items()), key=lambda row: (row.mean, row.host))
            for row in r.hosts:
                peaks = memory.get(row.host)
                if peaks:
                    row.peak_max, row.peak_median, row.peak_count = max(peaks), statistics.median(peaks), len(peaks)
            out.append(r)
        for t in replay.trials:
            if t is not RETIRED and (wanted is None or t.study == wanted):
                c = out[0 if wanted is not None else t.study].counts
                if t.state == RUNNING:
                    c["RUNNING"] += 1
                elif t.state == WAITING:
                    c["WAITING"] += 1
        return out


def build(entries: Iterable[str], study: str | None = None) -> list[StudyReport]:
    """The report of a whole journal, replayed from its first entry."""
    tally = Tally()
    chunk: list[str] = []
    for raw in entries:
        chunk.append(raw)
        if len(chunk) >= READ_CHUNK:
            tally.feed(chunk)
            chunk = []
    return tally.feed(chunk).reports(study)


def mib(n: float | None) -> str:
    """Bytes as MiB with one decimal ("-" for none)."""
    return "-" if n is None else f"{n / 2**20:.1f}"


def render(reports: list[StudyReport], elapsed: float) -> str:
    lines: list[str] = []
    for r in reports:
        c = r.counts
        lines.append(f"{r.study_id} {r.name}")
        lines.append(f"COMPLETE: {c['COMPLETE']}  (evaluated {c['evaluated']}, reused {c['reused']};"
                     f" duplicate-of-running {c['duplicate_running']}, FAIL {c['FAIL']},"
                     f" RUNNING {c['RUNNING']}, WAITING {c['WAITING']})")
        width = max([len(h.host) for h in r.hosts] + [4]) + 1
        memory = any(h.peak_count for h in r.hosts)
        head = f"{'host':<{width}}  {'mean s':>8}  {'median s':>8}  {'trials':>7}"
        lines.append(head + (f"  {'peak MiB max':>12}  {'median':>8}" if memory else ""))
        for h in r.hosts:
            line = f"{h.host + ':':<{width}}  {h.mean:8.2f}  {h.median:8.2f}  {h.count:7d}"
            if memory:
                line += (f"  {mib(h.peak_max):>12}  {mib(h.peak_median):>8}" if h.peak_count
                         else f"  {'-':>12}  {'-':>8}")
            lines.append(line)
        lines.append("")
    lines.append(f"report took {elapsed:.3f} s")
    return "\n".join(lines)


def run_report(client: Any, store: Any, study: str | None = None,
               cache: ReportCache | None = None) -> tuple[list[StudyReport], float]:
    """Reports of every study in the store (sorted by name), or of one; KeyError if it is unknown.
    With ``cache``, each journal's tally is taken from it and only newer entries are replayed."""
    t0 = time.perf_counter()
    names = _study_names(client, store, study)
    reports: list[StudyReport] = []
    for name in names:
        key = store.journal_key(name)
        saved = cache.load(key) if cache is not None else None
        cached = saved.pos if saved is not None else 0
        tally, fed = read_tally(client, key, saved)
        if cache is not None:
            if saved is not None and tally is saved:
                log.debug("%s: %d entries from the cache, %d new", key, cached, tally.pos - cached)
            elif saved is not None:
                log.debug("%s: not the journal cached (it shrank or changed): replayed whole, %d entries",
                          key, tally.pos)
            if fed:
                cache.save(key, tally)
        for r in tally.reports(name):
            r.study_id = len(reports)
            reports.append(r)
    return reports, time.perf_counter() - t0


def read_tally(client: Any, key: str, saved: Tally | None = None) -> tuple[Tally, bool]:
    """The journal at ``key`` replayed into a tally: ``saved`` fed the entries appended since it
    was made, or a new one from the first entry when the journal no longer holds the first and
    last entries ``saved`` replayed where it saw them (it shrank or changed). Also says whether
    any entry was replayed (False: ``saved`` is up to date)."""
    start, part, tally = 0, None, Tally()
    if saved is not None and saved.pos > 0:
        # one MULTI: the check and the first new entries are one view of the journal
        pipe = client.pipeline(transaction=True)
        pipe.lindex(key, 0)
        pipe.lindex(key, saved.pos - 1)
        pipe.lrange(key, saved.pos, saved.pos + READ_CHUNK - 1)
        first, last, new = pipe.execute()
        if first == saved.first and last == saved.last:
            start, part, tally = saved.pos, new, saved
    fed = False
    while True:
        if part is None:
            part = client.lrange(key, start, start + READ_CHUNK - 1)
        tally.feed(part)
        fed = fed or bool(part)
        if len(part) < READ_CHUNK:
            return tally, fed
        start += len(part)
        part = None


def _study_names(client: Any, store: Any, study: str | None) -> list[str]:
    names = sorted(client.smembers(store.k_studies))
    if study is not None:
        if study not in names:
            raise KeyError(study)
        names = [study]
    return names


def trial_lines(client: Any, store: Any, study: str | None = None) -> Iterable[str]:
    """``hpo-worker trials --json``: one JSON object per trial, studies sorted by name."""
    for name in _study_names(client, store, study):
        replay = Replay(params=True).feed(iter_journal(client, store.journal_key(name)))
        sid = replay.study_id(name)
        for t in replay.trials:
            if t.study != sid:
                continue
            yield json.dumps({"study": name, "number": t.number, "state": STATE_NAMES[t.state],
                              "params": t.params or {}, "values": t.values, "hpo": t.hpo,
                              "requeued_from": t.requeued_from, "requeue_reason": t.requeue_reason,
                              "datetime_start": t.start, "datetime_complete": t.complete})
