"""A small caching PyPI proxy for the nodes, so a wheel is downloaded once.

pip's own HTTP cache cannot help here: the egress proxy of these machines
strips Cache-Control, ETag and Last-Modified from PyPI's answers, so pip
stores nothing. Instead each cluster's host address serves:

    /simple/<project>/   PyPI's simple index page, with file links rewritten
                         to point back here; fetched once per INDEX_TTL
                         seconds for all nodes (kept on disk, shared by all
                         clusters), since pip asks for one page at a time
    /files/<path>        the file from files.pythonhosted.org, kept on disk
                         (shared by all clusters) after the first download

Nodes use it through /etc/pip.conf (index-url); see nodes.py. Run by `up`,
stopped by `down`:  python3 -m testbed.pypi_cache --listen ADDR --port N --cache DIR
"""

from __future__ import annotations

import argparse
import os
import shutil
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

INDEX = "https://pypi.org/simple/"
FILES = "https://files.pythonhosted.org/"
PORT = 3141
#: How long an index page is served from disk before it is fetched again: a
#: test run's installs are pinned, and its nodes ask for the same pages many
#: times (each node, each scenario), ~0.2-0.4 s upstream each.
INDEX_TTL = 3600.0
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def _context() -> ssl.SSLContext:
    if os.path.exists(CA_BUNDLE):
        return ssl.create_default_context(cafile=CA_BUNDLE)
    return ssl.create_default_context()


class Handler(BaseHTTPRequestHandler):
    server_version = "hpo-testbed-pypi-cache"
    cache_dir: Path = Path(".")
    index_ttl: float = INDEX_TTL
    locks: dict[str, threading.Lock] = {}
    locks_guard = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        if self.path.startswith("/simple/"):
            self._index_page(self.path[len("/simple/"):])
        elif self.path.startswith("/files/"):
            self._file(self.path[len("/files/"):])
        else:
            self.send_error(404)

    def _index_page(self, rest: str) -> None:
        project = rest.split("?", 1)[0].strip("/")
        if not project or "/" in project or project.startswith("."):
            self.send_error(404)
            return
        target = self.cache_dir / "index" / project / "index.html"
        with self._lock(f"index/{project}"):  # one upstream fetch per page, the others wait for it
            try:
                fresh = time.time() - target.stat().st_mtime < self.index_ttl
            except OSError:
                fresh = False
            if not fresh:
                request = urllib.request.Request(INDEX + project + "/", headers={"Accept": "text/html"})
                if not self._download(request, target):
                    return
                self.log_message("fetched the index page of %s for all nodes", project)
        body = target.read_bytes()
        host = self.headers.get("Host", f"{self.server.server_address[0]}:{PORT}")
        body = body.replace(FILES.encode(), f"http://{host}/files/".encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _file(self, rest: str) -> None:
        relative = Path(rest.split("?", 1)[0].split("#", 1)[0])
        if relative.is_absolute() or ".." in relative.parts:
            self.send_error(400)
            return
        target = self.cache_dir / "files" / relative
        with self._lock(str(relative)):  # one download per file, the others wait for it
            if not target.exists():
                if not self._download(FILES + str(relative), target):
                    return
                self.log_message("downloaded %s once for all nodes", target.name)
        self.log_message("serving %s", relative.name)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(target.stat().st_size))
        self.end_headers()
        with open(target, "rb") as handle:
            shutil.copyfileobj(handle, self.wfile)

    def _lock(self, key: str) -> threading.Lock:
        """The one lock of KEY, shared by every request thread."""
        with self.locks_guard:
            return self.locks.setdefault(key, threading.Lock())

    def _download(self, url: str | urllib.request.Request, target: Path) -> bool:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=300, context=_context()) as answer:
                with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
                    shutil.copyfileobj(answer, tmp)
            os.replace(tmp.name, target)
        except urllib.error.HTTPError as exc:
            self.send_error(exc.code)
            return False
        except OSError as exc:
            self.send_error(502, f"upstream: {exc}")
            return False
        return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="address (the cluster's host address)")
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--cache", required=True, type=Path, help="directory for cached files")
    parser.add_argument("--cluster-dir", help="the cluster this serves (for finding the process)")
    parser.add_argument("--index-ttl", type=float, default=INDEX_TTL,
                        help=f"seconds an index page is served from disk (default {INDEX_TTL:.0f}; 0: always fetched)")
    args = parser.parse_args()
    Handler.cache_dir = args.cache
    Handler.index_ttl = args.index_ttl
    server = ThreadingHTTPServer((args.listen, args.port), Handler)
    server.daemon_threads = True
    print(f"serving {INDEX} with a file cache in {args.cache} on {args.listen}:{args.port}",
          file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
