"""Browser tests of the cluster scenario: what people open, in a real browser.

Debian's chromium (/usr/bin/chromium, installed by bin/setup) driven by Playwright for
Python (requirements.txt; Playwright's own browser download is not used), on this machine,
which the test bed lists in firewall_workstations: the pages are reached as a person
would reach them, through the head's firewall, on the head's cluster address.

- optuna-dashboard (roles/optuna_dashboard): the login form with the cluster's Ray token,
  the digits-svc study listed with the store's COMPLETE count, its plots drawn; a write
  through its HTTP API refused (403) with the study unchanged in the store;
- the Ray dashboard: logged in with the same token, every node of the cluster listed;
- the HTML report (`hpo-worker report --html` on the head): its per-host table and plots.

This file runs before test_cluster.py (file order): the token rotation and the node
removal there come later. Screenshots: .cache/test-artifacts/screenshots/ in the project
directory (git-ignored), one PNG per page, kept after the run.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))
from verify_helpers import PROJECT, RUNNER, VENV, node, poll, recorder, trials, wait_for, with_store_env  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SHOTS = PROJECT / ".cache" / "test-artifacts" / "screenshots"
HEAD = RUNNER.get_hosts("ray_head")[0]
HEAD_VARS = RUNNER.get_variables(HEAD)
HEAD_IP = HEAD_VARS["cluster_address"]
TOKEN = HEAD_VARS["ray_auth_token"]
OPTUNA_DASHBOARD = f"http://{HEAD_IP}:{HEAD_VARS.get('optuna_dashboard_port', 8266)}"
RAY_DASHBOARD = f"http://{HEAD_IP}:{HEAD_VARS.get('ray_head_dashboard_port', 8265)}"
NODES = sorted(RUNNER.get_hosts("optuna_workers"))
DIGITS = "digits-svc"
TIMEOUT_MS = 45_000  # per browser step: the machine is shared and loaded
record = recorder("cluster-figures.json")


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: bin/setup installs Debian's chromium"
    SHOTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], timeout=60_000)
        yield b
        b.close()
    record(browser_tests_s=round(time.monotonic() - started, 1))


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    yield pg
    context.close()


def shot(pg, name: str) -> None:
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def digits_finished() -> list[dict]:
    """digits-svc's trials once every node's worker reached the budget and exited, none RUNNING."""
    def done():
        for n in NODES:
            state = node(n).run(f"systemctl show -p SubState --value hpo-worker@{DIGITS}.service").stdout.strip()
            if state != "exited":
                return None
        every = trials(HEAD, DIGITS)
        return every if every and not any(t["state"] == "RUNNING" for t in every) else None

    return wait_for("every digits-svc worker to reach the budget and exit", done, timeout=300, interval=3)


def optuna_login(pg) -> None:
    pg.goto(OPTUNA_DASHBOARD + "/dashboard")
    assert pg.url.endswith("/login"), f"no login asked: {pg.url}"
    pg.fill("#token", "not-the-token")
    pg.click("#login")
    assert pg.locator("#error").is_visible(), "a wrong token was not refused"
    pg.fill("#token", TOKEN)
    pg.click("#login")
    pg.wait_for_url(re.compile(r"/dashboard$"))


def study_id(pg, name: str) -> int:
    reply = pg.request.get(OPTUNA_DASHBOARD + "/api/studies")  # the login cookie goes with it
    assert reply.ok, reply.status
    return next(s["study_id"] for s in reply.json()["study_summaries"] if s["study_name"] == name)


def test_optuna_dashboard_lists_the_study_with_its_complete_count_and_draws_its_plots(page) -> None:
    every = digits_finished()
    complete = sum(t["state"] == "COMPLETE" for t in every)
    assert complete >= 60, complete
    # Without the token: the API answers 401, not the studies.
    try:
        urllib.request.urlopen(OPTUNA_DASHBOARD + "/api/studies", timeout=30)
        pytest.fail("the dashboard's API answered without the token")
    except urllib.error.HTTPError as e:
        assert e.code == 401, e.code

    optuna_login(page)
    page.get_by_text(DIGITS).first.wait_for()
    assert page.get_by_text("slow").count() > 0  # every study in the store
    shot(page, "optuna-dashboard-studies")

    sid = study_id(page, DIGITS)
    # The trial list says how many trials the study has (it draws only the rows in view).
    page.goto(f"{OPTUNA_DASHBOARD}/dashboard/studies/{sid}/trials")
    page.get_by_text(f"{len(every)} Trials", exact=True).wait_for()
    assert page.locator("li .MuiChip-label").first.inner_text() in ("Complete", "Fail", "Pruned")
    shot(page, "optuna-dashboard-trials")

    # The history plot draws one point per COMPLETE trial: as many as the store holds.
    page.goto(f"{OPTUNA_DASHBOARD}/dashboard/studies/{sid}")
    history = page.locator(".js-plotly-plot").first
    points = history.locator(".scatterlayer .trace").first.locator(".point")
    drawn = poll(lambda: points.count() if points.count() >= complete else None, timeout=45)
    assert drawn == complete, f"history plot: {points.count()} points, {complete} COMPLETE trials in the store"
    wait_for("the importance plot", lambda: page.locator(".js-plotly-plot").count() >= 2, timeout=45)
    shot(page, "optuna-dashboard-study")
    record(optuna_dashboard_complete=complete, optuna_dashboard_history_points=drawn)


def test_a_write_through_the_dashboard_api_is_refused_and_the_study_is_unchanged(page) -> None:
    before = trials(HEAD, DIGITS)
    optuna_login(page)
    sid = study_id(page, DIGITS)
    writes = [("put", f"/api/studies/{sid}/note", {"version": 1, "body": "written through the dashboard"}),
              ("delete", f"/api/studies/{sid}", None),
              ("post", f"/api/trials/{sid << 32}/user-attrs", {"user_attrs": {"edited": True}})]
    for method, path, payload in writes:
        reply = getattr(page.request, method)(OPTUNA_DASHBOARD + path, **({"data": payload} if payload else {}))
        assert reply.status == 403, (method, path, reply.status, reply.text())
        assert "read-only" in reply.json()["reason"], reply.text()
    assert trials(HEAD, DIGITS) == before
    assert study_id(page, DIGITS) == sid
    detail = page.request.get(f"{OPTUNA_DASHBOARD}/api/studies/{sid}")
    assert detail.ok and "written through the dashboard" not in detail.text()
    # Where the service reads from and how it runs: the token file is named, never the token.
    unit = node(HEAD).run("systemctl show -p ExecStart,User --value hpo-dashboard.service").stdout
    assert "--token-file" in unit and TOKEN not in unit, unit


def test_ray_dashboard_with_the_token_lists_every_node(page) -> None:
    ray_nodes = sorted(RUNNER.get_hosts("ray_head") + RUNNER.get_hosts("ray_workers"))
    page.goto(RAY_DASHBOARD + "/")
    box = page.get_by_placeholder("Enter your authentication token")  # Ray's own token dialog
    box.fill("not-the-token-not-the-token-not-the-token")
    page.get_by_role("button", name="Submit").click()
    page.get_by_text("Invalid authentication token").wait_for()
    shot(page, "ray-dashboard-login")
    box.fill(TOKEN)
    page.get_by_role("button", name="Submit").click()
    page.get_by_text("Authentication Token Required").wait_for(state="detached")
    assert any(c["name"] == "ray-authentication-token" and c["httpOnly"] for c in page.context.cookies())
    page.goto(RAY_DASHBOARD + "/#/cluster")
    page.get_by_text(f"ALIVE x {len(ray_nodes)}").wait_for()
    for name in ray_nodes:
        page.get_by_text(name, exact=True).first.wait_for()
        page.get_by_text(RUNNER.get_variables(name)["cluster_address"]).first.wait_for()
    shot(page, "ray-dashboard-cluster")


def test_html_report_shows_its_table_and_plots(page) -> None:
    complete = sum(t["state"] == "COMPLETE" for t in digits_finished())
    remote = "/root/hpo-report-browser-test.html"
    out = node(HEAD).run(with_store_env(f"{VENV}/bin/hpo-worker report --study {DIGITS} --html {remote}"))
    assert out.rc == 0, out.stderr[-3000:]
    page_text = node(HEAD).run(f"cat {shlex.quote(remote)}; rm -f {shlex.quote(remote)}").stdout
    local = SHOTS.parent / "hpo-report.html"
    local.write_text(page_text, encoding="utf-8")
    page.goto(local.as_uri())
    table = page.locator("table.hosts")
    table.first.wait_for()
    hosts = [h.strip() for h in table.first.locator("tbody tr td:first-child").all_inner_texts()]
    assert sorted(h.rstrip(":") for h in hosts) == NODES, hosts
    assert page.get_by_text(f"COMPLETE: {complete} (").count() == 1  # the store's count
    plots = page.locator(".js-plotly-plot")
    wait_for("the report's plots to be drawn", lambda: plots.count() >= 3, timeout=45, interval=1)
    assert page.locator(".js-plotly-plot .main-svg").count() >= 3
    shot(page, "html-report")
    record(html_report_bytes=len(page_text.encode()), html_report_plots=plots.count())
