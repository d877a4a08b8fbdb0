"""Per-host performance table, read straight from the journal (no Optuna replay).

For each study: its COMPLETE count, then one line per host with the mean and
median duration of the trials that host evaluated and their count, fastest
first. Trials that took a value from an identical COMPLETE trial (duplicate
guard) count as COMPLETE but not as evaluations.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .journal import COMPLETE, FAIL, PRUNED, RUNNING, STATE_NAMES, WAITING, Replay


@dataclass
class HostRow:
    host: str
    mean: float
    median: float
    count: int


@dataclass
class StudyReport:
    study_id: int
    name: str
    counts: dict[str, int] = field(default_factory=dict)
    hosts: list[HostRow] = field(default_factory=list)


def build(entries: Iterable[str], study: str | None = None) -> list[StudyReport]:
    replay = Replay().feed(entries)
    wanted = replay.study_id(study) if study is not None else None
    if study is not None and wanted is None:
        raise KeyError(study)

    reports = [StudyReport(i, n) for i, n in enumerate(replay.study_names)]
    per_host: list[dict[str, list[float]]] = [{} for _ in reports]
    for r in reports:
        r.counts = {"COMPLETE": 0, "evaluated": 0, "reused": 0, "duplicate_running": 0,
                    "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    parse = datetime.fromisoformat
    for t in replay.trials:
        c = reports[t.study].counts
        h = t.hpo or {}
        if t.state == COMPLETE:
            c["COMPLETE"] += 1
            if "reused_from" in h:
                c["reused"] += 1
            elif t.start and t.complete:
                c["evaluated"] += 1
                d = (parse(t.complete) - parse(t.start)).total_seconds()
                per_host[t.study].setdefault(str(h.get("host", "?")), []).append(d)
        elif t.state == PRUNED and "duplicate_of" in h:
            c["duplicate_running"] += 1
        elif t.state == FAIL:
            c["FAIL"] += 1
        elif t.state == RUNNING:
            c["RUNNING"] += 1
        elif t.state == WAITING:
            c["WAITING"] += 1
    for r, hosts in zip(reports, per_host):
        r.hosts = sorted((HostRow(h, statistics.fmean(v), statistics.median(v), len(v)) for h, v in hosts.items()),
                         key=lambda row: (row.mean, row.host))
    if wanted is not None:
        return [reports[wanted]]
    return reports


def render(reports: list[StudyReport], elapsed: float) -> str:
    lines: list[str] = []
    for r in reports:
        c = r.counts
        lines.append(f"{r.study_id} {r.name}")
        lines.append(f"COMPLETE: {c['COMPLETE']}  (evaluated {c['evaluated']}, reused {c['reused']};"
                     f" duplicate-of-running {c['duplicate_running']}, FAIL {c['FAIL']},"
                     f" RUNNING {c['RUNNING']}, WAITING {c['WAITING']})")
        width = max([len(h.host) for h in r.hosts] + [4]) + 1
        lines.append(f"{'host':<{width}}  {'mean s':>8}  {'median s':>8}  {'trials':>7}")
        for h in r.hosts:
            lines.append(f"{h.host + ':':<{width}}  {h.mean:8.2f}  {h.median:8.2f}  {h.count:7d}")
        lines.append("")
    lines.append(f"report took {elapsed:.3f} s")
    return "\n".join(lines)


def run_report(client: Any, store: Any, study: str | None = None) -> tuple[list[StudyReport], float]:
    """Reports of every study in the store (sorted by name), or of one; KeyError if it is unknown."""
    from .store import iter_journal

    t0 = time.perf_counter()
    names = _study_names(client, store, study)
    reports: list[StudyReport] = []
    for name in names:
        for r in build(iter_journal(client, store.journal_key(name)), name):
            r.study_id = len(reports)
            reports.append(r)
    return reports, time.perf_counter() - t0


def _study_names(client: Any, store: Any, study: str | None) -> list[str]:
    names = sorted(client.smembers(store.k_studies))
    if study is not None:
        if study not in names:
            raise KeyError(study)
        names = [study]
    return names


def trial_lines(client: Any, store: Any, study: str | None = None) -> Iterable[str]:
    """``hpo-worker trials --json``: one JSON object per trial, studies sorted by name."""
    from .store import iter_journal

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
