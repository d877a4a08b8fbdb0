"""`hpo-worker dashboard` (hpo_worker.dashboard): the real command, real optuna-dashboard, a real
redis-server written by real workers, over HTTP on loopback. The token gate (bearer header, login
form and its HttpOnly cookie, 401/403), the studies listed with the store's COMPLETE count, every
write through the dashboard's HTTP API refused with nothing changed in the store, and a token given
nowhere but in a file."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from conftest import PASSWORD, free_port, start_worker, worker_env, write_spec
from hpo_worker.readonly_storage import read_only_storage

TOKEN = "dashboard-test-token-0123456789-abcdefghij"
SPACE = {"x": {"type": "int", "low": 0, "high": 99}, "y": {"type": "float", "low": 0.0, "high": 1.0}}


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def call(url, method="GET", headers=None, data=None):
    """(status, headers, body) of one request; redirects are not followed."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with OPENER.open(req, timeout=30) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def store_state(client):
    return {k: client.dump(k) for k in sorted(client.keys("*")) if client.ttl(k) == -1}


@pytest.fixture
def dashboard(servers, tmp_path):
    r = servers("d")
    spec = write_spec(tmp_path / "dash.yaml", name="dash", space=SPACE, budget={"n_trials": 10})
    p = start_worker(spec, [r.endpoint], worker_env(tmp_path / "e.jsonl"), processes=2, log=tmp_path / "w.log")
    assert p.wait(180) == 0, (tmp_path / "w.log").read_text()[-3000:]
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    env = worker_env(tmp_path / "unused.jsonl")
    log = open(tmp_path / "dashboard.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "hpo_worker", "dashboard", "--endpoints", r.endpoint,
                             "--host", "127.0.0.1", "--port", str(port), "--token-file", str(token_file)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            call(base + "/login")
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
            assert time.monotonic() < deadline, "the dashboard did not answer within 60 s"
            time.sleep(0.3)
    yield base, r, proc
    proc.terminate()
    proc.wait(30)
    log.close()


def test_the_token_is_needed_and_the_study_is_listed_with_its_complete_count(dashboard):
    base, r, proc = dashboard
    assert TOKEN not in " ".join(proc.args)  # a file name on the command line, never the token
    status, _, body = call(base + "/api/studies")
    assert status == 401 and "token" in json.loads(body)["reason"]
    assert call(base + "/api/studies", headers={"Authorization": "Bearer wrong"})[0] == 401
    status, headers, _ = call(base + "/dashboard")
    assert (status, headers["Location"]) == (303, "/login")

    status, _, body = call(base + "/api/studies", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, body
    studies = json.loads(body)["study_summaries"]
    assert [s["study_name"] for s in studies] == ["dash"]
    detail = json.loads(call(base + f"/api/studies/{studies[0]['study_id']}",
                             headers={"Authorization": f"Bearer {TOKEN}"})[2])
    storage = read_only_storage([r.endpoint], password=PASSWORD)  # the store's own view
    in_store = [t.state.name for t in storage.get_all_trials(storage.get_study_id_from_name("dash"))]
    assert in_store.count("COMPLETE") >= 10
    assert [t["state"].upper() for t in detail["trials"]] == in_store


def test_the_login_form_sets_an_httponly_cookie_that_opens_the_dashboard(dashboard):
    base, _, _ = dashboard
    assert call(base + "/login", "POST", data=b"token=nope")[0] == 403
    status, headers, _ = call(base + "/login", "POST", data=urllib.parse.urlencode({"token": TOKEN}).encode())
    assert status == 303 and headers["Location"] == "/dashboard"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
    status, _, body = call(base + "/dashboard", headers={"Cookie": cookie.split(";")[0]})
    assert status == 200 and "<html" in body.lower()
    assert call(base + "/api/studies", headers={"Cookie": cookie.split(";")[0]})[0] == 200


def test_every_write_through_the_http_api_is_refused_and_the_store_is_unchanged(dashboard):
    base, r, _ = dashboard
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    before = store_state(r.client())
    writes = [("PUT", "/api/studies/0/note", {"version": 1, "body": "edited"}),
              ("PUT", "/api/studies/0/0/note", {"version": 1, "body": "edited"}),
              ("DELETE", "/api/studies/0", None),
              ("POST", "/api/studies", {"study_name": "new", "directions": ["minimize"]}),
              ("POST", "/api/studies/0/rename", {"study_name": "renamed"}),
              ("POST", "/api/trials/0/user-attrs", {"user_attrs": {"k": "v"}}),
              ("POST", "/api/trials/0/tell", {"state": "Fail"})]
    for method, path, payload in writes:
        status, _, body = call(base + path, method, auth, json.dumps(payload).encode() if payload else None)
        assert status == 403, (method, path, status, body)
        assert "read-only" in json.loads(body)["reason"], body
    assert store_state(r.client()) == before
    status, _, body = call(base + "/api/studies", headers=auth)
    assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["dash"]


def test_bad_settings_are_refused_with_a_clear_message(tmp_path):
    env = worker_env(tmp_path / "e.jsonl")
    base = [sys.executable, "-m", "hpo_worker", "dashboard", "--endpoints", "127.0.0.1:1", "--host", "127.0.0.1"]
    p = subprocess.run(base, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--token-file" in p.stderr, p.stderr
    p = subprocess.run(base + ["--token-file", str(tmp_path / "missing")], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "cannot read" in p.stderr and "missing" in p.stderr, p.stderr

