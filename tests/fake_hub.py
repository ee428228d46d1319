"""A stand-in Hugging Face Hub on 127.0.0.1 for tests: what huggingface_hub 2.4 calls, plus injectable faults.

Knows the Hub's HTTP surface as `hf_hub_download` / `snapshot_download` use it (model info, tree listing,
paths-info, `resolve` with X-Repo-Commit / ETag / sizes, legacy-id redirects, LFS files served from a second
origin behind a 302, the X-Error-Code headers for missing repos, files and gated repos); knows nothing about
models. Faults are rules matched on the request path: an HTTP status, a delay, a stall before any answer, or
headers followed by a body that never comes. Every stall ends when the hub stops (bounded by `max_stall_s`).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Fault:
    """What to do to requests whose path matches `path` (a regex, searched): first matching rule wins."""

    path: str
    status: int | None = None  # answer this status (with `headers`) instead of the real response
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0  # wait before answering
    stall: bool = False  # accept the request and never answer
    stall_body: bool = False  # send the real headers, then never send the body
    method: str | None = None  # only this method (HEAD, GET, POST)
    times: int | None = None  # apply this many times, then stop matching
    hits: int = 0


@dataclass
class Repo:
    repo_id: str
    files: dict[str, bytes]
    gated: bool = False
    lfs: tuple[str, ...] = (".safetensors", ".bin")

    @property
    def sha(self) -> str:
        return hashlib.sha1(f"commit:{self.repo_id}".encode()).hexdigest()

    def is_lfs(self, name: str) -> bool:
        return name.endswith(self.lfs)

    def entry(self, name: str) -> dict:
        data = self.files[name]
        entry = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": name}
        if self.is_lfs(name):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """`with FakeHub() as hub:` -> hub.url is the HF_ENDPOINT; hub.add_repo(...), hub.fault(...), hub.requests."""

    def __init__(self, max_stall_s: float = 60.0):
        self.repos: dict[str, Repo] = {}
        self.aliases: dict[str, str] = {}  # legacy id -> canonical id (gpt2 -> openai-community/gpt2)
        self.faults: list[Fault] = []
        self.requests: list[str] = []  # "METHOD /path" in arrival order
        self.max_stall_s = max_stall_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    # -- content --------------------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes], *, gated: bool = False, alias: str | None = None) -> Repo:
        repo = self.repos[repo_id] = Repo(repo_id, dict(files), gated=gated)
        if alias:
            self.aliases[alias] = repo_id
        return repo

    def fault(self, path: str, **kw) -> Fault:
        rule = Fault(path, **kw)
        with self._lock:
            self.faults.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()

    # -- server ---------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def start(self) -> FakeHub:
        handler = type("Handler", (_Handler,), {"hub": self})
        for _ in range(2):  # the Hub, and a second origin standing for the LFS/CDN host
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        self._stop.set()  # releases every stalled request
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _match(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests.append(f"{method} {path}")
            for rule in self.faults:
                if rule.method not in (None, method) or not re.search(rule.path, path):
                    continue
                if rule.times is not None and rule.hits >= rule.times:
                    continue
                rule.hits += 1
                return rule
        return None


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self):
        self._handle("HEAD")

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    # -- plumbing -------------------------------------------------------------------------------------------
    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._body_in = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        rule = self.hub._match(method, path)
        if rule is not None:
            if rule.delay_s:
                self.hub._stop.wait(rule.delay_s)
            if rule.stall:
                self.hub._stop.wait(self.hub.max_stall_s)
                self.close_connection = True
                return
            if rule.status is not None:
                return self._send(rule.status, b"", dict(rule.headers), method)
        self._stall_body = bool(rule and rule.stall_body)
        try:
            self._route(method, path)
        except BrokenPipeError:
            pass

    def _send(self, status: int, body: bytes, headers: dict | None = None, method: str = "GET") -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if method == "HEAD":
            return
        if getattr(self, "_stall_body", False) and body:
            self.wfile.write(body[: len(body) // 10])
            self.wfile.flush()
            self.hub._stop.wait(self.hub.max_stall_s)
            self.close_connection = True
            return
        self.wfile.write(body)

    def _json(self, status: int, obj, method: str, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}, method)

    def _repo_error(self, method: str, code: str, message: str, status: int = 404, extra: dict | None = None):
        headers = {"X-Error-Code": code, "X-Error-Message": message, **(extra or {})}
        self._json(status, {"error": message}, method, headers)

    def _split_repo(self, rest: str) -> tuple[str | None, str]:
        """'<repo id>/<tail>' -> (known repo id or alias, tail); repo ids have one or two parts."""
        parts = rest.split("/")
        for n in (2, 1):
            candidate = "/".join(parts[:n])
            if candidate in self.hub.repos or candidate in self.hub.aliases:
                return candidate, "/".join(parts[n:])
        guess = 2 if len(parts) > 2 else 1
        return None, "/".join(parts[guess:]) if len(parts) > guess else ""

    # -- routes ---------------------------------------------------------------------------------------------
    def _route(self, method: str, path: str) -> None:
        path = unquote(path)
        if path.startswith("/lfs/"):
            return self._lfs(method, path[len("/lfs/"):])
        if path.startswith("/api/models/"):
            return self._api(method, path[len("/api/models/"):])
        return self._resolve(method, path.lstrip("/"))

    def _alias_redirect(self, method: str, old: str, new_path: str) -> None:
        self._send(307, b"", {"Location": new_path}, method)

    def _api(self, method: str, rest: str) -> None:
        repo_id, tail = self._split_repo(rest)
        if repo_id is None:
            return self._repo_error(method, "RepoNotFound", "Repository not found", status=401)
        if repo_id in self.hub.aliases:
            return self._alias_redirect(method, repo_id, f"/api/models/{self.hub.aliases[repo_id]}/{tail}".rstrip("/"))
        repo = self.hub.repos[repo_id]
        if tail == "" or tail.startswith("revision/"):
            siblings = [{"rfilename": name} for name in sorted(repo.files)]
            return self._json(200, {"_id": repo.sha[:24], "id": repo_id, "modelId": repo_id, "sha": repo.sha,
                                    "private": False, "gated": "auto" if repo.gated else False, "disabled": False,
                                    "tags": ["gpt2"], "siblings": siblings, "downloads": 0, "likes": 0}, method)
        if tail.startswith("tree/"):
            prefix = tail.split("/", 2)[2] if tail.count("/") >= 2 else ""
            entries = [repo.entry(n) for n in sorted(repo.files) if n.startswith(prefix)]
            return self._json(200, entries, method)
        if tail.startswith("paths-info/"):
            from urllib.parse import parse_qs

            body = self._body_in.decode()
            try:
                wanted = json.loads(body).get("paths", [])
            except ValueError:
                wanted = parse_qs(body).get("paths", [])
            return self._json(200, [repo.entry(n) for n in wanted if n in repo.files], method)
        self._json(404, {"error": "not found"}, method)

    def _resolve(self, method: str, rest: str) -> None:
        repo_id, tail = self._split_repo(rest)
        if repo_id is None:
            return self._repo_error(method, "RepoNotFound", "Repository not found", status=401)
        if repo_id in self.hub.aliases:
            return self._alias_redirect(method, repo_id, f"/{self.hub.aliases[repo_id]}/{tail}")
        repo = self.hub.repos[repo_id]
        m = re.fullmatch(r"resolve/([^/]+)/(.+)", tail)
        if not m:
            return self._json(404, {"error": "not found"}, method)
        revision, name = m.groups()
        if revision not in ("main", repo.sha):
            return self._repo_error(method, "RevisionNotFound", "Invalid rev id", extra={"X-Repo-Commit": repo.sha})
        if repo.gated:
            return self._repo_error(method, "GatedRepo", f"Access to model {repo_id} is restricted. You must have "
                                    "access to it and be authenticated to access it. Please log in.", status=401)
        if name not in repo.files:
            return self._repo_error(method, "EntryNotFound", f"{name} does not exist on \"{revision}\"",
                                    extra={"X-Repo-Commit": repo.sha})
        data = repo.files[name]
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{git_blob_oid(data)}"', "Accept-Ranges": "bytes"}
        if repo.is_lfs(name):  # LFS: the Hub answers 302 to another origin, carrying the file's metadata
            sha256 = hashlib.sha256(data).hexdigest()
            headers.update({"X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data)),
                            "Location": f"{self.hub.cdn_url}/lfs/{sha256}"})
            return self._send(302, b"", headers, method)
        self._send(200, data, headers, method)

    def _lfs(self, method: str, sha256: str) -> None:
        for repo in self.hub.repos.values():
            for data in repo.files.values():
                if hashlib.sha256(data).hexdigest() == sha256:
                    return self._send(200, data, {"ETag": f'"{sha256}"', "Content-Type": "application/octet-stream"},
                                      method)
        self._json(404, {"error": "no such blob"}, method)


def checkpoint_files(directory) -> dict[str, bytes]:
    """Every file of a save_pretrained directory, for FakeHub.add_repo."""
    from pathlib import Path

    return {p.name: p.read_bytes() for p in Path(directory).iterdir() if p.is_file()}


def wait_until(predicate, timeout_s: float = 10.0, step_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()
