"""`hpo-worker report --html FILE` on a real redis-server with real workers: the page holds each
study's counts and per-host table (the text report's), and one plotly figure per plot whose
data (parsed from the page) has the right trial counts; plotly's JS is inline, once."""

import base64
import json
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
from conftest import PASSWORD, load_trials, start_worker, worker_env, write_spec

SPACE2 = {"x": {"type": "int", "low": 0, "high": 99}, "y": {"type": "float", "low": 0.0, "high": 1.0}}
SPACE1 = {"x": {"type": "int", "low": 0, "high": 99}}


def run(tmp_path, eps, name, space, host, n):
    spec = write_spec(tmp_path / f"{name}-{host}.yaml", name=name, space=space, budget={"n_trials": n})
    p = start_worker(spec, eps, worker_env(tmp_path / "e.jsonl", sleep=0.01), host=host, processes=2,
                     log=tmp_path / "w.log")
    assert p.wait(180) == 0, (tmp_path / "w.log").read_text()[-3000:]


def cli(eps, tmp_path, *args, pre=""):
    code = f"import sys; {pre}from hpo_worker.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "report", "--endpoints", ",".join(eps), *args],
                          env=worker_env(tmp_path / "unused.jsonl", HPO_CACHE_DIR=str(tmp_path / "cache")),
                          capture_output=True, text=True, timeout=300)


def array(v):
    """A plotly data array: a JSON list, or plotly's typed array {"dtype", "bdata"} (base64)."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)


class Page(HTMLParser):
    """The figures (kind, study, plotly data) and the per-host table rows of each study section."""

    def __init__(self, text):
        super().__init__()
        self.study = None
        self.rows = {}
        self._row = None
        self._cell = None
        self.figures = []
        self.feed(text)
        dec = json.JSONDecoder()
        # each figure div is followed by its Plotly.newPlot("fig-N", data, layout, config) call
        for m in re.finditer(r'<div class="figure" data-kind="(\w+)" data-study="([^"]*)">', text):
            i = text.index("Plotly.newPlot(", m.end()) + len("Plotly.newPlot(")
            args = []
            for _ in range(3):
                while text[i] in " \n,":
                    i += 1
                obj, i = dec.raw_decode(text, i)
                args.append(obj)
            self.figures.append((m.group(1), m.group(2), args[1], args[2]))

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and a.get("class") == "study":
            self.study = a["data-study"]
            self.rows[self.study] = []
        elif tag == "tr" and a.get("class") == "host":
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows[self.study].append(self._row)
            self._row = None


def text_rows(stdout, study):
    """host rows (host, mean, median, count) of one study in the text report."""
    lines = stdout.splitlines()
    i = lines.index(next(line for line in lines if line.endswith(f" {study}")))
    out = []
    for line in lines[i + 3:]:
        if not line.strip() or line.startswith("report took"):
            break
        host, mean, median, count = line.split()
        out.append([host.rstrip(":"), mean, median, count])
    return out


def test_html_report_tables_and_plot_data_match_the_study(servers, tmp_path):
    r = servers("h")
    eps = [r.endpoint]
    run(tmp_path, eps, "hx", SPACE2, "hostA", 30)
    run(tmp_path, eps, "hx", SPACE2, "hostB", 45)
    run(tmp_path, eps, "hy", SPACE1, "hostA", 6)
    out = tmp_path / "report.html"
    p = cli(eps, tmp_path, "--html", str(out))
    assert p.returncode == 0, p.stderr
    assert f"html report: {out} (" in p.stdout
    page_text = out.read_text()
    assert '<script src="http' not in page_text and "<script src=" not in page_text
    assert len(re.findall(r"\* plotly\.js v\d", page_text)) == 1, "plotly's JS embedded exactly once"
    page = Page(page_text)
    assert list(page.rows) == ["hx", "hy"]
    kinds = {(k, s) for k, s, _, _ in page.figures}
    assert len(kinds) == len(page.figures), "one figure per plot and study"
    assert kinds == {("history", "hx"), ("importances", "hx"), ("durations", "hx"), ("history", "hy"),
                     ("durations", "hy")}
    assert "left out: the study has 1 param(s)" in page_text  # hy: no importances, said why

    for study, params in (("hx", {"x", "y"}), ("hy", {"x"})):
        assert page.rows[study] == text_rows(p.stdout, study), "the HTML table is the text report's"
        assert {row[0] for row in page.rows[study]} == ({"hostA", "hostB"} if study == "hx" else {"hostA"})
        trials = load_trials(r.endpoint, study)
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        figs = {k: (data, layout) for k, s, data, layout in page.figures if s == study}
        # optimisation history: one point per COMPLETE trial, at its number, with its value
        data, _ = figs["history"]
        points = next(d for d in data if d.get("mode") == "markers")
        assert sorted(array(points["x"])) == sorted(t.number for t in complete)
        by_number = {t.number: t.value for t in complete}
        assert all(abs(by_number[n] - v) < 1e-9 for n, v in zip(array(points["x"]), array(points["y"])))
        # durations: one box per host with one value per trial the host evaluated (its table count)
        data, _ = figs["durations"]
        boxes = {d["name"]: array(d["y"]) for d in data}
        assert {h: len(v) for h, v in boxes.items()} == {row[0]: int(row[3]) for row in page.rows[study]}
        for h, v in boxes.items():
            mine = sorted((t.datetime_complete - t.datetime_start).total_seconds() for t in complete
                          if t.user_attrs["hpo"]["host"] == h and "reused_from" not in t.user_attrs["hpo"])
            assert np.allclose(sorted(v), mine)
        if study == "hx":
            data, _ = figs["importances"]
            assert sorted(p for d in data for p in array(d["y"])) == sorted(params)

    # one study only
    one = tmp_path / "one.html"
    p = cli(eps, tmp_path, "--study", "hy", "--html", str(one))
    assert p.returncode == 0, p.stderr
    page = Page(one.read_text())
    assert list(page.rows) == ["hy"] and {s for _, s, _, _ in page.figures} == {"hy"}
    assert len(re.findall(r"\* plotly\.js v\d", one.read_text())) == 1


def test_html_report_without_plotly_says_how_to_install_it(servers, tmp_path):
    """plotly missing: simulated by blocking its import in the CLI's process (it is installed here)."""
    r = servers("np")
    out = tmp_path / "r.html"
    p = cli([r.endpoint], tmp_path, "--html", str(out), pre="sys.modules['plotly'] = None; ")
    assert p.returncode == 2
    assert "pip install 'hpo-worker[html]'" in p.stderr and "plotly" in p.stderr, p.stderr
    assert not out.exists()
    assert PASSWORD not in p.stderr
