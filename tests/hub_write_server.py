"""A test-only Hub endpoint that accepts writes: the calls ``HfApi.create_repo``, ``upload_folder`` and
``create_tag`` make (huggingface_hub 2.4.0), stored as git commits in olah's mirror folder, with every
other request proxied to olah. So a test can push through the real client and download the result
through a real Hub-compatible server, as a user would.

Served here (everything else goes to the upstream olah):

- ``POST /api/repos/create``: ``git init`` plus an initial commit holding ``.gitattributes``, as the
  Hub does; 409 when the repo exists;
- ``POST /api/validate-yaml``: parses the card's front matter;
- ``POST /api/models/{repo}/preupload/{rev}``: every file ``"regular"`` (so no LFS/Xet protocol),
  with the remote blob oid so unchanged files are skipped;
- ``POST /api/models/{repo}/commit/{rev}``: NDJSON header + base64 ``file`` / ``deletedFile`` lines;
- ``POST /api/models/{repo}/tag/{rev}``: a git tag; 409 when it exists.

Writes need ``Authorization: Bearer <token>``. It is not a Hub: one branch (``main``), no LFS, no PRs.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

from hub_olah import free_port

_REPO = r"/api/models/(?P<repo_id>[^/]+/[^/]+)"
_ROUTES = [("create", re.compile(r"/api/repos/create")), ("validate", re.compile(r"/api/validate-yaml")),
           ("preupload", re.compile(_REPO + r"/preupload/(?P<rev>[^/]+)")),
           ("commit", re.compile(_REPO + r"/commit/(?P<rev>[^/]+)")),
           ("tag", re.compile(_REPO + r"/tag/(?P<rev>[^/]+)"))]
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}
_GIT_ENV = {"GIT_AUTHOR_NAME": "test-hub", "GIT_AUTHOR_EMAIL": "test-hub@localhost",
            "GIT_COMMITTER_NAME": "test-hub", "GIT_COMMITTER_EMAIL": "test-hub@localhost", "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull}


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class HubWriteServer:
    def __init__(self, mirrors: Path, upstream: str, token: str = "test-token") -> None:
        self.mirrors, self.upstream, self.token = mirrors, urlsplit(upstream), token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.calls: list[tuple[str, str]] = []  # (route, path) of every write, for assertions
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "HubWriteServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # git ------------------------------------------------------------------------------------------
    def repo_dir(self, repo_id: str) -> Path:
        return self.mirrors / "models" / repo_id

    @staticmethod
    def git(repo: Path, *args: str, check: bool = True) -> str:
        res = subprocess.run(["git", *args], cwd=repo, env={**os.environ, **_GIT_ENV}, capture_output=True, text=True)
        if check and res.returncode:
            raise _HTTPError(500, f"git {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout.strip() if res.returncode == 0 else ""

    def existing_repo(self, repo_id: str) -> Path:
        repo = self.repo_dir(repo_id)
        if not (repo / ".git").is_dir():
            raise _HTTPError(404, f"Repository Not Found for url: {repo_id}", code="RepoNotFound")
        return repo

    # routes ---------------------------------------------------------------------------------------
    def create(self, body: dict) -> dict:
        if body.get("type", "model") != "model":
            raise _HTTPError(400, "this test server has model repos only")
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        repo = self.repo_dir(repo_id)
        if repo.exists():
            raise _HTTPError(409, "You already created this model repo", url=f"{self.url}/{repo_id}")
        repo.mkdir(parents=True)
        self.git(repo, "init", "-q", "-b", "main")
        (repo / ".gitattributes").write_text("# test hub: every file is a regular git blob\n")
        self.git(repo, "add", "-A")
        self.git(repo, "commit", "-q", "-m", "initial commit")
        return {"url": f"{self.url}/{repo_id}", "name": repo_id}

    def validate(self, body: dict) -> dict:
        m = re.match(r"---\n(.*?)\n---\n", body.get("content", ""), re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else {}
        except yaml.YAMLError as e:
            raise _HTTPError(400, "invalid metadata", errors=[{"message": f"invalid YAML: {e}"}])
        if not isinstance(meta, dict):
            raise _HTTPError(400, "invalid metadata", errors=[{"message": "metadata must be a mapping"}])
        return {"errors": [], "warnings": []}

    def preupload(self, repo_id: str, rev: str, body: dict) -> dict:
        repo = self.existing_repo(repo_id)
        return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                           "oid": self.git(repo, "rev-parse", f"{rev}:{f['path']}", check=False) or None}
                          for f in body["files"]]}

    def commit(self, repo_id: str, rev: str, raw: bytes) -> dict:
        repo = self.existing_repo(repo_id)
        if rev != "main":
            raise _HTTPError(400, f"this test server commits to main only, not {rev!r}")
        lines = [json.loads(ln) for ln in raw.splitlines() if ln.strip()]
        header = lines[0]["value"]
        head = self.git(repo, "rev-parse", "HEAD")
        if header.get("parentCommit") and header["parentCommit"] != head:
            raise _HTTPError(412, f"parent commit {header['parentCommit']} is not the head {head}")
        for item in lines[1:]:
            key, value = item["key"], item["value"]
            target = repo / value["path"]
            if ".git" in Path(value["path"]).parts or not target.resolve().is_relative_to(repo.resolve()):
                raise _HTTPError(400, f"invalid path {value['path']!r}")
            if key == "file":
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base64.b64decode(value["content"]))
            elif key == "deletedFile":
                target.unlink(missing_ok=True)
            elif key == "deletedFolder":
                shutil.rmtree(target, ignore_errors=True)
            else:
                raise _HTTPError(400, f"this test server takes regular files only, not {key!r}")
        self.git(repo, "add", "-A")
        message = header["summary"] + (f"\n\n{header['description']}" if header.get("description") else "")
        self.git(repo, "commit", "-q", "--allow-empty", "-m", message)
        sha = self.git(repo, "rev-parse", "HEAD")
        return {"success": True, "commitOid": sha, "commitUrl": f"{self.url}/{repo_id}/commit/{sha}",
                "hookOutput": ""}

    def tag(self, repo_id: str, rev: str, body: dict) -> dict:
        repo = self.existing_repo(repo_id)
        if self.git(repo, "rev-parse", "-q", "--verify", f"refs/tags/{body['tag']}", check=False):
            raise _HTTPError(409, f"tag {body['tag']} already exists")
        self.git(repo, "tag", body["tag"], rev)
        return {}

    # HTTP -----------------------------------------------------------------------------------------
    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "content-length" not in {k.lower() for k in headers}:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _proxy(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(server.upstream.hostname, server.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                out = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP}
                if self.command == "HEAD" and resp.getheader("Content-Length") is not None:
                    out["Content-Length"] = resp.getheader("Content-Length")
                conn.close()
                self._send(resp.status, data, out)

            def do_GET(self) -> None:
                self._proxy()

            def do_HEAD(self) -> None:
                self._proxy()

            def do_POST(self) -> None:
                path = unquote(urlsplit(self.path).path)
                for route, pattern in _ROUTES:
                    if m := pattern.fullmatch(path):
                        break
                else:
                    return self._proxy()
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    if self.headers.get("Authorization") != f"Bearer {server.token}":
                        raise _HTTPError(401, "Invalid credentials in Authorization header")
                    with server.lock:
                        server.calls.append((route, path))
                        args = m.groupdict()
                        body = raw if route == "commit" else json.loads(raw or b"{}")
                        out = getattr(server, route)(**args, **({"raw": body} if route == "commit" else {"body": body}))
                    self._send(200, json.dumps(out).encode(), {"Content-Type": "application/json"})
                except Exception as e:  # a bug here must answer (500), not drop the connection into retries
                    e = e if isinstance(e, _HTTPError) else _HTTPError(500, f"{type(e).__name__}: {e}")
                    headers = {"Content-Type": "application/json"}
                    if e.code:
                        headers["X-Error-Code"] = e.code
                    self._send(e.status, json.dumps({"error": e.message, **e.extra}).encode(), headers)

        return Handler
