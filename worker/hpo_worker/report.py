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

# optuna.trial.TrialState: RUNNING=0, COMPLETE=1, PRUNED=2, FAIL=3, WAITING=4
S_RUNNING, S_COMPLETE, S_PRUNED, S_FAIL, S_WAITING = 0, 1, 2, 3, 4
_SKIP_OPS = {"5", "7", "9", "2", "3"}  # params, intermediate values, system attrs, study attrs


@dataclass
class _Trial:
    study: int
    state: int
    start: str | None
    complete: str | None = None
    host: str = "?"
    reused: bool = False
    duplicate: bool = False


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


def _op(raw: str) -> str:
    # json.dumps of Optuna's journal entries starts with {"op_code": N
    if raw.startswith('{"op_code": '):
        end = raw.find(",", 12)
        return raw[12:end]
    return str(json.loads(raw)["op_code"])


def build(entries: Iterable[str], study: str | None = None) -> list[StudyReport]:
    names: dict[str, int] = {}
    study_names: list[str] = []
    trials: list[_Trial] = []
    wanted: int | None = None
    for raw in entries:
        op = _op(raw)
        if op in _SKIP_OPS:
            continue
        if op == "0":
            e = json.loads(raw)
            if e["study_name"] not in names:
                names[e["study_name"]] = len(study_names)
                study_names.append(e["study_name"])
                if study is not None and e["study_name"] == study:
                    wanted = names[study]
            continue
        if op == "4":
            e = json.loads(raw)
            sid = e["study_id"]
            if sid >= len(study_names):
                continue
            t = _Trial(sid, e.get("state", S_RUNNING), e.get("datetime_start"), e.get("datetime_complete"))
            h = (e.get("user_attrs") or {}).get("hpo")
            if isinstance(h, dict):
                t.host = str(h.get("host", "?"))
                t.reused = "reused_from" in h
                t.duplicate = "duplicate_of" in h
            trials.append(t)
            continue
        if op in ("6", "8"):
            e = json.loads(raw)
            tid = e["trial_id"]
            if tid >= len(trials):
                continue
            t = trials[tid]
            if t.state in (S_COMPLETE, S_PRUNED, S_FAIL):
                continue  # finished trials are not updatable (as in Optuna's replay)
            if op == "6":
                st = e["state"]
                if st == S_RUNNING:
                    if t.state == S_RUNNING:
                        continue
                    t.start = e.get("datetime_start")
                elif st in (S_COMPLETE, S_PRUNED, S_FAIL):
                    t.complete = e.get("datetime_complete")
                t.state = st
            else:
                h = e["user_attr"].get("hpo")
                if isinstance(h, dict):
                    t.host = str(h.get("host", "?"))
                    t.reused = "reused_from" in h
                    t.duplicate = "duplicate_of" in h
    if study is not None and wanted is None:
        raise KeyError(study)

    reports = [StudyReport(i, n) for i, n in enumerate(study_names)]
    per_host: list[dict[str, list[float]]] = [{} for _ in study_names]
    for r in reports:
        r.counts = {"COMPLETE": 0, "evaluated": 0, "reused": 0, "duplicate_running": 0,
                    "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    parse = datetime.fromisoformat
    for t in trials:
        c = reports[t.study].counts
        if t.state == S_COMPLETE:
            c["COMPLETE"] += 1
            if t.reused:
                c["reused"] += 1
            elif t.start and t.complete:
                c["evaluated"] += 1
                d = (parse(t.complete) - parse(t.start)).total_seconds()
                per_host[t.study].setdefault(t.host, []).append(d)
        elif t.state == S_PRUNED and t.duplicate:
            c["duplicate_running"] += 1
        elif t.state == S_FAIL:
            c["FAIL"] += 1
        elif t.state == S_RUNNING:
            c["RUNNING"] += 1
        elif t.state == S_WAITING:
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
    names = sorted(client.smembers(store.k_studies))
    if study is not None:
        if study not in names:
            raise KeyError(study)
        names = [study]
    reports: list[StudyReport] = []
    for name in names:
        for r in build(iter_journal(client, store.journal_key(name)), name):
            r.study_id = len(reports)
            reports.append(r)
    return reports, time.perf_counter() - t0
