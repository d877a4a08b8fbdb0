"""optuna-dashboard over the read-only storage, behind the cluster's Ray token (``hpo-worker dashboard``).

The dashboard (the ``dashboard`` extra: optuna-dashboard, bottle) serves every study in the store
through :class:`hpo_worker.readonly_storage.ReadOnlyStorage`: it reads where the workers read and
follows a failover. Two layers keep it from ever writing:

- :class:`TokenGate` answers every HTTP write (POST, PUT, PATCH, DELETE under ``/api/``: notes,
  user attrs, tell, delete or rename a study) with ``403`` and a JSON ``reason`` saying why, before
  optuna-dashboard sees it;
- anything that still tried to write would reach the storage, which refuses every write method.

Access needs the cluster's Ray token, as Ray's dashboard does: a request carries it as
``Authorization: Bearer TOKEN``, or as the HttpOnly cookie that ``/login`` sets after the token
was pasted into its form. Without it, ``/api/`` answers ``401`` and pages send the browser to
``/login``. The token is read from a file (never from a command line).
"""

from __future__ import annotations

import hmac
import json
import logging
import socketserver
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger(__name__)

COOKIE = "hpo_dashboard_token"
COOKIE_MAX_AGE = 30 * 24 * 3600
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOGIN_PATH = "/login"
WRITE_REFUSAL = ("refused: this optuna-dashboard is read-only (hpo-worker dashboard): only the hpo-worker"
                 " workers write to the store, through the fenced writer")

_LOGIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>optuna-dashboard: log in</title></head>
<body style="font-family: sans-serif; max-width: 36em; margin: 4em auto">
<h1>optuna-dashboard (hpo-cluster)</h1>
<p>Paste the cluster's Ray token (the same one as for the Ray dashboard).</p>
{message}
<form method="post" action="/login">
<input type="password" name="token" id="token" size="50" autocomplete="off" autofocus>
<button type="submit" id="login">Log in</button>
</form></body></html>
"""


def read_token(path: str | Path) -> str:
    """The token in PATH (surrounding whitespace removed); a ValueError naming PATH when unreadable or empty."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"--token-file: cannot read {path}: {exc.strerror or exc}") from None
    if not token:
        raise ValueError(f"--token-file: {path} is empty")
    return token


class TokenGate:
    """WSGI middleware: the token check, the login form, and the refusal of every write under /api/.

    ``token=None`` means no authentication (the cluster opted out of Ray's token: the dashboard is
    then as open as Ray's); writes are refused all the same."""

    def __init__(self, app: Callable, token: str | None) -> None:
        self.app = app
        self.token = token

    def _matches(self, candidate: str | None) -> bool:
        return bool(candidate) and self.token is not None and hmac.compare_digest(
            candidate.encode("utf-8"), self.token.encode("utf-8"))

    def _authenticated(self, environ: dict[str, Any]) -> bool:
        if self.token is None:
            return True
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if auth.startswith("Bearer ") and self._matches(auth[len("Bearer "):].strip()):
            return True
        for part in environ.get("HTTP_COOKIE", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and self._matches(urllib.parse.unquote(value)):
                return True
        return False

    @staticmethod
    def _reply(start_response: Callable, status: str, body: str, content_type: str,
               headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
        data = body.encode("utf-8")
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(data))),
                                ("Cache-Control", "no-store"), *headers])
        return [data]

    def _login(self, environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            return self._reply(start_response, "200 OK", _LOGIN_PAGE.format(message=""), "text/html; charset=utf-8")
        try:
            size = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            size = 0
        form = urllib.parse.parse_qs(environ["wsgi.input"].read(min(size, 4096)).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        if not self._matches(token):
            message = '<p id="error" style="color: #b00">That is not the cluster\'s token.</p>'
            return self._reply(start_response, "403 Forbidden", _LOGIN_PAGE.format(message=message),
                               "text/html; charset=utf-8")
        cookie = (f"{COOKIE}={urllib.parse.quote(token, safe='')}; Max-Age={COOKIE_MAX_AGE}; Path=/;"
                  " HttpOnly; SameSite=Strict")
        return self._reply(start_response, "303 See Other", "", "text/plain",
                           [("Set-Cookie", cookie), ("Location", "/dashboard")])

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path.rstrip("/") == LOGIN_PATH and self.token is not None:
            return self._login(environ, start_response)
        if not self._authenticated(environ):
            if path.startswith("/api/"):
                return self._reply(start_response, "401 Unauthorized",
                                   json.dumps({"reason": "the cluster's Ray token is needed: send"
                                               " 'Authorization: Bearer TOKEN' or log in at /login"}),
                                   "application/json", [("WWW-Authenticate", "Bearer")])
            return self._reply(start_response, "303 See Other", "", "text/plain", [("Location", LOGIN_PATH)])
        if method in WRITE_METHODS:
            log.warning("refused %s %s: read-only dashboard", method, path)
            reason = json.dumps({"reason": f"{method} {path}: {WRITE_REFUSAL}"})
            return self._reply(start_response, "403 Forbidden", reason, "application/json")
        return self.app(environ, start_response)


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # the browser opens several connections at once


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)


def build_app(storage: Any, token: str | None) -> Callable:
    """optuna-dashboard's WSGI app for STORAGE, behind :class:`TokenGate`."""
    from optuna_dashboard import wsgi

    return TokenGate(wsgi(storage), token)


def serve(storage: Any, host: str, port: int, token: str | None) -> None:
    """Serve the dashboard of STORAGE on HOST:PORT until the process is stopped."""
    server = make_server(host, port, build_app(storage, token), server_class=_ThreadingServer,
                         handler_class=_QuietHandler)
    log.info("optuna-dashboard on http://%s:%d/ (%s)", host, port,
             "the cluster's Ray token needed" if token else "no authentication")
    try:
        server.serve_forever()
    finally:
        server.server_close()
