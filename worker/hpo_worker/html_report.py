"""``hpo-worker report --html FILE``: one self-contained HTML page for one study or all.

Per study: the counts and the per-host table of the text report (:mod:`hpo_worker.report`,
same words, same numbers), then plots made by Optuna's visualisation module on a real
``optuna.Study`` over :class:`hpo_worker.readonly_storage.ReadOnlyStorage`: the optimisation
history, the parameter importances (Optuna's default evaluator; left out with a note when the
study has fewer than two params or fewer than :data:`MIN_IMPORTANCE_TRIALS` COMPLETE trials)
and, drawn with plotly, the per-host distribution of the durations of the trials each host
evaluated (the trials the per-host table counts), and, for studies run with the spec's
``worker.memray``, the peak memory of each evaluated trial per host.

plotly's JavaScript is written once into the page (the first figure), so the file opens
without a network. plotly is the ``html`` extra of the package (``pip install
'hpo-worker[html]'``); without it ``--html`` stops with a message saying so.
"""

from __future__ import annotations

import html
import time
from datetime import datetime, timezone
from typing import Any

from .report import StudyReport, mib

MIN_IMPORTANCE_TRIALS = 10  # COMPLETE trials below which importances are not computed
PLOTLY_HINT = ("hpo-worker report --html needs plotly, the package's 'html' extra, which is not installed in"
               " this Python: pip install 'hpo-worker[html]' (or the pinned plotly of worker/pyproject.toml)")


class HtmlUnavailable(ValueError):
    """plotly is not installed (a ValueError: the CLI prints it and exits 2)."""


def require_plotly() -> Any:
    try:
        import plotly.graph_objects  # noqa: F401
        import plotly.io
    except ImportError as exc:
        raise HtmlUnavailable(f"{PLOTLY_HINT} ({exc})") from None
    return plotly.io


def _evaluated(trials: list[Any]) -> dict[str, list[float]]:
    """Durations in s per host of the trials a host evaluated (the per-host table's rule)."""
    per: dict[str, list[float]] = {}
    for t in trials:
        h = t.user_attrs.get("hpo") or {}
        if t.state.name == "COMPLETE" and "reused_from" not in h and t.datetime_start and t.datetime_complete:
            per.setdefault(str(h.get("host", "?")), []).append((t.datetime_complete - t.datetime_start).total_seconds())
    return per


def _peaks(trials: list[Any]) -> dict[str, list[tuple[int, int]]]:
    """(trial number, peak bytes) per host of the evaluated trials that carry a peak (spec worker.memray)."""
    per: dict[str, list[tuple[int, int]]] = {}
    for t in trials:
        h = t.user_attrs.get("hpo") or {}
        peak = h.get("peak_memory_bytes")
        if t.state.name == "COMPLETE" and "reused_from" not in h and isinstance(peak, int):
            per.setdefault(str(h.get("host", "?")), []).append((t.number, peak))
    return per


def _counts_line(c: dict[str, int]) -> str:
    return (f"COMPLETE: {c['COMPLETE']} (evaluated {c['evaluated']}, reused {c['reused']};"
            f" duplicate-of-running {c['duplicate_running']}, FAIL {c['FAIL']}, RUNNING {c['RUNNING']},"
            f" WAITING {c['WAITING']})")


def _table(r: StudyReport) -> str:
    memory = any(h.peak_count for h in r.hosts)

    def peaks(h: Any) -> str:
        return f"<td>{mib(h.peak_max)}</td><td>{mib(h.peak_median)}</td>" if memory else ""

    rows = "".join(f'<tr class="host"><td>{html.escape(h.host)}</td><td>{h.mean:.2f}</td><td>{h.median:.2f}</td>'
                   f"<td>{h.count}</td>{peaks(h)}</tr>" for h in r.hosts)
    extra = "<th>peak MiB max</th><th>peak MiB median</th>" if memory else ""
    return ('<table class="hosts"><thead><tr><th>host</th><th>mean s</th><th>median s</th><th>trials</th>'
            f"{extra}</tr></thead><tbody>{rows}</tbody></table>")


class _Page:
    """The page's figures: plotly's JS goes with the first one only."""

    def __init__(self, pio: Any) -> None:
        self.pio = pio
        self.n = 0

    def figure(self, fig: Any, kind: str, study: str) -> str:
        self.n += 1
        fig.update_layout(height=420)
        div = self.pio.to_html(fig, include_plotlyjs=self.n == 1, full_html=False, div_id=f"fig-{self.n}",
                               config={"responsive": True})
        return f'<div class="figure" data-kind="{kind}" data-study="{html.escape(study)}">{div}</div>'


def _study_section(page: _Page, storage: Any, r: StudyReport) -> str:
    import optuna
    import plotly.graph_objects as go
    from optuna import visualization as vis

    study = optuna.load_study(study_name=r.name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    multi = len(study.directions) > 1
    target = (lambda t: t.values[0]) if multi else None
    target_name = "objective 0" if multi else "Objective Value"
    name = html.escape(r.name)
    out = [f'<section class="study" data-study="{name}"><h2>{name}</h2>',
           f'<p class="counts">{html.escape(_counts_line(r.counts))}</p>', _table(r)]

    out.append("<h3>Optimisation history</h3>")
    if complete:
        fig = vis.plot_optimization_history(study, target=target, target_name=target_name)
        out.append(page.figure(fig, "history", r.name))
    else:
        out.append('<p class="note">no COMPLETE trial yet: no history</p>')

    out.append("<h3>Parameter importances</h3>")
    params = set().union(*(t.params for t in complete)) if complete else set()
    if len(params) < 2:
        out.append(f'<p class="note">left out: the study has {len(params)} param(s); importances need 2 or more</p>')
    elif len(complete) < MIN_IMPORTANCE_TRIALS:
        out.append(f'<p class="note">left out: {len(complete)} COMPLETE trial(s); importances need'
                   f" {MIN_IMPORTANCE_TRIALS} or more</p>")
    else:
        try:
            fig = vis.plot_param_importances(study, target=target, target_name=target_name)
        except (ValueError, RuntimeError) as exc:  # e.g. no param common to every trial
            out.append(f'<p class="note">importances could not be computed: {html.escape(str(exc))}</p>')
        else:
            out.append(page.figure(fig, "importances", r.name))

    out.append("<h3>Trial durations per host</h3>")
    per = _evaluated(trials)
    if per:
        order = [h.host for h in r.hosts] + sorted(set(per) - {h.host for h in r.hosts})
        fig = go.Figure([go.Box(y=per[h], name=h, boxpoints="outliers") for h in order if h in per])
        fig.update_layout(title="Duration of the trials each host evaluated", yaxis_title="seconds",
                          xaxis_title="host", showlegend=False)
        out.append(page.figure(fig, "durations", r.name))
    else:
        out.append('<p class="note">no evaluated trial yet: no durations</p>')

    peaks = _peaks(trials)
    if peaks:  # only studies run with worker.memray have a peak per trial
        out.append("<h3>Peak memory per trial</h3>")
        order = [h.host for h in r.hosts] + sorted(set(peaks) - {h.host for h in r.hosts})
        fig = go.Figure([go.Scatter(x=[n for n, _ in peaks[h]], y=[b / 2**20 for _, b in peaks[h]], name=h,
                                    mode="markers") for h in order if h in peaks])
        fig.update_layout(title="Peak memory of each evaluated trial (memray)", yaxis_title="MiB",
                          xaxis_title="trial number")
        out.append(page.figure(fig, "memory", r.name))
    out.append("</section>")
    return "\n".join(out)


_STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1200px}
table.hosts{border-collapse:collapse}table.hosts td,table.hosts th{border:1px solid #bbb;padding:2px 8px;
text-align:right}table.hosts td:first-child{text-align:left}.note{color:#666;font-style:italic}
section.study{border-top:2px solid #444;margin-top:2em}"""


def build_html(storage: Any, reports: list[StudyReport], source: str = "") -> str:
    """The page for ``reports`` (from :func:`hpo_worker.report.run_report`), plots from ``storage``."""
    pio = require_plotly()
    import optuna
    import plotly

    page = _Page(pio)
    t0 = time.perf_counter()
    sections = [_study_section(page, storage, r) for r in reports]
    when = datetime.now(tz=timezone.utc).isoformat(timespec="seconds")
    head = (f"<p>{len(reports)} stud{'y' if len(reports) == 1 else 'ies'}; read from {html.escape(source)};"
            f" made {when} in {time.perf_counter() - t0:.1f} s with Optuna {optuna.__version__},"
            f" plotly {plotly.__version__}</p>")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>hpo-worker report</title>"
            f"<style>{_STYLE}</style></head><body><h1>hpo-worker report</h1>{head}\n"
            + "\n".join(sections) + "\n</body></html>\n")
