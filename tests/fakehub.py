"""A stand-in for the Hub's HTTP API on 127.0.0.1, for testing the real upload path of `parity publish` without a
network: it answers the few endpoints huggingface_hub's create_repo / create_branch / repo_exists / create_commit
call, says every file is a 'regular' upload (so the commit request carries each file's bytes), and records every
request as it arrived. Anything else is answered 404 and recorded, so a test sees unexpected calls."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)

    def ndjson(self) -> list[dict]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


@dataclass
class FakeHub:
    existing: set[str] = field(default_factory=set)
    """Repositories that exist before the test (GET /api/models/ORG/NAME answers 200)."""
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args):
                pass

            def _answer(self, status: int, payload: dict, error_code: str | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                if error_code:
                    self.send_header("X-Error-Code", error_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> Request:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                hub.requests.append(request)
                return request

            def do_GET(self):
                request = self._record()
                parts = request.path.split("?")[0].strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) == 4 and "/".join(parts[2:]) in hub.existing:
                    return self._answer(200, {"id": "/".join(parts[2:]), "sha": "0" * 40, "siblings": []})
                self._answer(404, {"error": "Repository not found"}, error_code="RepoNotFound")

            def do_POST(self):
                request = self._record()
                path = request.path.split("?")[0]
                parts = path.strip("/").split("/")
                if path == "/api/repos/create":
                    body = request.json()
                    repo = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
                    hub.existing.add(repo)
                    return self._answer(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":
                    return self._answer(200, {"errors": [], "warnings": []})
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "preupload":
                    files = request.json()["files"]
                    return self._answer(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                         "shouldIgnore": False, "oid": None} for f in files]})
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "branch":
                    return self._answer(200, {})
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "commit":
                    repo = "/".join(parts[2:4])
                    pr = "create_pr=1" in request.path
                    return self._answer(200, {"commitUrl": f"{hub.url}/{repo}/commit/{'1' * 40}",
                                              "commitOid": "1" * 40,
                                              "pullRequestUrl": f"{hub.url}/{repo}/discussions/1" if pr else None})
                self._answer(404, {"error": f"no such endpoint {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path.split("?")[0]) for r in self.requests]
