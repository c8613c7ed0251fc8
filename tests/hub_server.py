"""A small local stand-in for the Hugging Face Hub HTTP API, for tests.

Why: the real clients (`huggingface_hub`, `datasets`, `peft`) talk to the Hub over HTTP, and the tests must not
reach the network. Rather than monkeypatching client methods, the tests point the clients at this server through
`HF_ENDPOINT`, so every request goes through the clients' real code paths (upload modes, LFS batch + PUT + verify,
NDJSON commits, HEAD/GET on `resolve` with ETags and ranges, tree listing for `HfFileSystem`).

Only the subset of the API those clients use is implemented. Storage is on disk under `root`:

    root/blobs/<sha256>                          file contents (regular and LFS), content addressed
    root/<models|datasets>/<ns>/<name>/repo.json {"private": bool, "refs": {"main": <commit id>}}
    root/<models|datasets>/<ns>/<name>/commits/<id>.json
                                                 {"parent", "title", "date", "tree": {path: entry}}

A commit stores the full file tree, so any older commit id still serves its own content. A commit lands atomically:
all blobs are written first, then the commit file, then `repo.json` is replaced in one `os.replace`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_THRESHOLD = 10 * 1024 * 1024
# Extensions the real Hub's default .gitattributes routes through LFS.
LFS_SUFFIXES = (".bin", ".safetensors", ".parquet", ".arrow", ".pt", ".pth", ".ckpt", ".h5", ".png", ".jpg", ".zip")
GITATTRIBUTES = b"".join(b"*%s filter=lfs diff=lfs merge=lfs -text\n" % s.encode() for s in LFS_SUFFIXES)
TYPES = {"models": "model", "datasets": "dataset"}


def card_metadata_problems(card: str) -> list[str]:
    """The Hub's model-card metadata rules these tests rely on (types of the keys and model-index shape)."""
    import yaml

    if not card.startswith("---\n") or "\n---" not in card[4:]:
        return ["README.md has no YAML metadata block"]
    meta = yaml.safe_load(card[4 : card.index("\n---", 4)]) or {}
    if not isinstance(meta, dict):
        return ["metadata must be a mapping"]
    problems = []
    for key in ("language", "tags", "datasets"):
        value = meta.get(key, [])
        if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            problems.append(f'"{key}" must be a string or a list of strings')
    for key in ("license", "library_name", "pipeline_tag", "base_model"):
        if key in meta and not isinstance(meta[key], str):
            problems.append(f'"{key}" must be a string')
    for i, model in enumerate(meta.get("model-index", [])):
        if not isinstance(model.get("name"), str):
            problems.append(f'"model-index[{i}].name" is required')
        for j, result in enumerate(model.get("results", [])):
            where = f"model-index[{i}].results[{j}]"
            if "type" not in result.get("task", {}):
                problems.append(f'"{where}.task.type" is required')
            if not {"type", "name"} <= set(result.get("dataset", {})):
                problems.append(f'"{where}.dataset" needs "type" and "name"')
            for k, metric in enumerate(result.get("metrics", [])):
                if "type" not in metric or not isinstance(metric.get("value"), (int, float, str)):
                    problems.append(f'"{where}.metrics[{k}]" needs "type" and a scalar "value"')
    return problems


class HubError(Exception):
    """Turned into an HTTP error; `code` goes to X-Error-Code, which the client maps to its exception classes."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1, which the client compares with a preupload `oid` to skip unchanged regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class Store:
    """Repositories, commits and blobs on disk. One lock serialises writes, so commits are all-or-nothing."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha)
        if not path.exists():
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    def repo_dir(self, kind: str, repo_id: str) -> Path:
        return self.root / kind / repo_id

    def meta(self, kind: str, repo_id: str) -> dict | None:
        path = self.repo_dir(kind, repo_id) / "repo.json"
        return json.loads(path.read_text()) if path.exists() else None

    def commit(self, kind: str, repo_id: str, oid: str) -> dict:
        return json.loads((self.repo_dir(kind, repo_id) / "commits" / f"{oid}.json").read_text())

    def resolve(self, kind: str, repo_id: str, revision: str) -> str:
        """A branch name or a (prefix of a) commit id -> the full commit id."""
        meta = self.meta(kind, repo_id)
        if revision in meta["refs"]:
            return meta["refs"][revision]
        if len(revision) >= 7 and all(c in "0123456789abcdef" for c in revision):
            found = [p.stem for p in (self.repo_dir(kind, repo_id) / "commits").glob(f"{revision}*.json")]
            if len(found) == 1:
                return found[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def create(self, kind: str, repo_id: str, owner: str, private: bool, url: str) -> None:
        with self.lock:
            if self.meta(kind, repo_id) is not None:
                raise HubError(409, "You already created this repo", url=url)  # the client reads "url" on 409
            (self.repo_dir(kind, repo_id) / "commits").mkdir(parents=True)
            meta = {"owner": owner, "private": private, "createdAt": now_iso(), "refs": {}}
            self._write_meta(kind, repo_id, meta)
            blob = {"sha256": self.put_blob(GITATTRIBUTES), "oid": git_blob_oid(GITATTRIBUTES)}
            entry = {**blob, "size": len(GITATTRIBUTES), "lfs": False}
            self._commit(kind, repo_id, meta, "main", "initial commit", {".gitattributes": entry})

    def delete(self, kind: str, repo_id: str) -> None:
        """Commits go with the repo; blobs stay (content addressed, possibly shared)."""
        with self.lock:
            shutil.rmtree(self.repo_dir(kind, repo_id))

    def apply(self, kind: str, repo_id: str, branch: str, title: str, parent: str | None, ops: list) -> str:
        """Apply ("add", path, entry) / ("delete", path) / ("delete_folder", path) ops as one new commit."""
        with self.lock:
            meta = self.meta(kind, repo_id)
            if branch not in meta["refs"]:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = meta["refs"][branch]
            if parent is not None and parent != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(self.commit(kind, repo_id, head)["tree"])
            for op, path, *rest in ops:
                if op == "add":
                    tree[path] = rest[0]
                elif op == "delete" and path in tree:
                    del tree[path]
                elif op == "delete":
                    raise HubError(404, f"File not found: {path}", "EntryNotFound")
                else:
                    tree = {p: e for p, e in tree.items() if not p.startswith(path.rstrip("/") + "/")}
            return self._commit(kind, repo_id, meta, branch, title, tree)

    def _commit(self, kind: str, repo_id: str, meta: dict, branch: str, title: str, tree: dict) -> str:
        parent = meta["refs"].get(branch)
        body = {"parent": parent, "title": title, "date": now_iso(), "tree": tree}
        oid = hashlib.sha1(json.dumps([body, time.time_ns()], sort_keys=True).encode()).hexdigest()
        (self.repo_dir(kind, repo_id) / "commits" / f"{oid}.json").write_text(json.dumps(body))
        meta["refs"][branch] = oid
        self._write_meta(kind, repo_id, meta)
        return oid

    def _write_meta(self, kind: str, repo_id: str, meta: dict) -> None:
        path = self.repo_dir(kind, repo_id) / "repo.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, path)  # the moment a commit becomes visible

    def last_commit(self, kind: str, repo_id: str, oid: str, path: str) -> dict:
        """The oldest commit in the unbroken run of ancestors where `path` had its current entry (for expand=True)."""
        commit = self.commit(kind, repo_id, oid)
        entry = commit["tree"].get(path)
        while commit["parent"] and self.commit(kind, repo_id, commit["parent"])["tree"].get(path) == entry:
            oid, commit = commit["parent"], self.commit(kind, repo_id, commit["parent"])
        return {"id": oid, "title": commit["title"], "date": commit["date"]}


def file_info(path: str, entry: dict, store: Store | None = None, where: tuple | None = None) -> dict:
    """A tree/paths-info entry as `huggingface_hub.hf_api.RepoFile` parses it."""
    pointer = lfs_pointer(entry["sha256"], entry["size"])
    info = {"type": "file", "path": path, "size": entry["size"], "oid": entry.get("oid")}
    if entry["lfs"]:
        info["oid"] = git_blob_oid(pointer)
        info["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": len(pointer)}
    if store is not None:
        info["lastCommit"] = store.last_commit(*where, path)
    return info


@dataclass
class Fault:
    kind: str  # "fail" | "delay" | "drop"
    prefix: str
    times: int
    method: str | None
    status: int = 500
    seconds: float = 0.0


class Faults:
    """Explicit fault injection: the next `times` requests whose URL path starts with `prefix` misbehave.

        hub.faults.fail("/api/models/alice/x/commit/", status=500, times=2)  # answer 500 twice
        hub.faults.delay("/api/models/alice/x/commit/", seconds=3)           # answer late (client times out)
        hub.faults.drop("/_lfs/", method="PUT")                              # close the socket mid-body

    Every request is logged, so a test can count what the client sent (e.g. its own retries).
    """

    def __init__(self) -> None:
        self._rules: list[Fault] = []
        self._lock = threading.Lock()
        self.log: list[tuple[str, str]] = []

    def fail(self, prefix: str, status: int = 500, times: int = 1, method: str | None = None) -> None:
        self._add(Fault("fail", prefix, times, method, status=status))

    def delay(self, prefix: str, seconds: float, times: int = 1, method: str | None = None) -> None:
        self._add(Fault("delay", prefix, times, method, seconds=seconds))

    def drop(self, prefix: str, times: int = 1, method: str | None = None) -> None:
        self._add(Fault("drop", prefix, times, method))

    def clear(self) -> None:
        """Disarm every fault (the log stays)."""
        with self._lock:
            self._rules.clear()

    def _add(self, fault: Fault) -> None:
        with self._lock:
            self._rules.append(fault)

    def hits(self, prefix: str, method: str | None = None) -> int:
        """Requests received so far whose path starts with `prefix` (faulty ones included)."""
        with self._lock:
            return sum(p.startswith(prefix) and method in (None, m) for m, p in self.log)

    def take(self, method: str, path: str) -> Fault | None:
        """Log the request; the first armed fault that matches it, used up once."""
        with self._lock:
            self.log.append((method, path))
            for fault in self._rules:
                if fault.times > 0 and path.startswith(fault.prefix) and fault.method in (None, method):
                    fault.times -= 1
                    return fault
        return None


class Handler(BaseHTTPRequestHandler):
    """Routes requests by URL shape. `self.server.hub` is the owning `LocalHub`."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    # ---- plumbing -------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        return self.body

    def _read_body(self) -> bytes:
        """Always read the whole request body first: on a keep-alive connection leftovers would corrupt the next one."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype="application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, ctype="application/json") -> None:
        self._send(status, json.dumps(obj).encode(), ctype=ctype)

    def _user(self) -> tuple[str, str] | None:
        auth = self.headers.get("Authorization", "")
        return self.server.hub.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None

    def _need_write(self, namespace: str) -> str:
        """Writes need a write token whose user owns the namespace: 401 without a valid token, 403 otherwise."""
        user = self._user()
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        if user[1] != "write" or user[0] != namespace:
            raise HubError(403, "You don't have the rights to write to this repository")
        return user[0]

    def _repo(self, kind: str, repo_id: str) -> dict:
        """The repo's metadata; private repos look exactly like missing ones to anyone but their owner."""
        meta = self.server.hub.store.meta(kind, repo_id)
        user = self._user()
        if meta is None or (meta["private"] and (user is None or user[0] != meta["owner"])):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return meta

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        fault = self.server.hub.faults.take(self.command, url.path)
        if fault is not None and fault.kind == "drop":  # read half the body, then hang up without an answer
            self.rfile.read(int(self.headers.get("Content-Length") or 0) // 2)
            self.close_connection = True
            return
        self.body = self._read_body()
        if fault is not None and fault.kind == "fail":
            message = f"Injected fault: {fault.status}"
            return self._send(fault.status, json.dumps({"error": message}).encode(), {"X-Error-Message": message})
        if fault is not None:
            time.sleep(fault.seconds)
        try:
            self._route(self.command, parts, query)
        except HubError as e:
            headers = {"X-Error-Message": e.message, **({"X-Error-Code": e.code} if e.code else {})}
            self._send(e.status, json.dumps({"error": e.message, **e.extra}).encode(), headers)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # ---- routes ---------------------------------------------------------------------------------------------
    def _route(self, method: str, parts: list[str], query: dict) -> None:
        store = self.server.hub.store
        if parts[:2] == ["api", "whoami-v2"]:
            user = self._user()
            if user is None:
                raise HubError(401, "Invalid credentials in Authorization header")
            token = {"displayName": "test", "role": user[1]}
            return self._json({"type": "user", "name": user[0], "fullname": user[0], "orgs": [], "auth": {
                "type": "access_token", "accessToken": token}})  # fmt: skip
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            body = json.loads(self._body())
            namespace = body.get("organization") or (self._user() or ("",))[0]
            self._need_write(namespace)
            kind = body.get("type", "model") + "s"
            repo_id = f"{namespace}/{body['name']}"
            private = bool(body.get("private")) or body.get("visibility") == "private"
            prefix = "" if kind == "models" else f"{kind}/"
            url = f"{self.server.hub.endpoint}/{prefix}{repo_id}"
            store.create(kind, repo_id, namespace, private, url)
            return self._json({"url": url, "name": repo_id, "id": repo_id})
        if parts[:3] == ["api", "repos", "delete"] and method == "DELETE":
            body = json.loads(self._body())
            namespace = body.get("organization") or (self._user() or ("",))[0]
            self._need_write(namespace)
            kind = body.get("type", "model") + "s"
            self._repo(kind, f"{namespace}/{body['name']}")
            store.delete(kind, f"{namespace}/{body['name']}")
            return self._json({})
        if parts[:2] == ["api", "validate-yaml"]:
            problems = card_metadata_problems(json.loads(self._body())["content"])
            if problems:
                return self._send(400, "\n".join(problems).encode(), ctype="text/plain")
            return self._json({"errors": [], "warnings": []})
        if parts[0] == "api" and len(parts) >= 4 and parts[1] in TYPES:
            return self._api_repo(method, parts[1], "/".join(parts[2:4]), parts[4:], query)
        if parts[0] == "_lfs":
            return self._lfs_object(method, parts[1], verify=parts[2:] == ["verify"])
        kind = "datasets" if parts[0] == "datasets" else "models"
        parts = parts[1:] if kind == "datasets" else parts
        if len(parts) >= 4 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(kind, f"{parts[0]}/{parts[1][:-4]}")
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(kind, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        raise HubError(404, f"No route for {method} {self.path}")

    def _api_repo(self, method: str, kind: str, repo_id: str, rest: list[str], query: dict) -> None:
        store = self.server.hub.store
        meta = self._repo(kind, repo_id)
        action, revision = (rest[0], rest[1]) if len(rest) >= 2 else ("info", "main")
        if action == "commit" and method == "POST":
            self._need_write(meta["owner"])
            return self._commit(kind, repo_id, revision)
        if action == "preupload" and method == "POST":
            self._need_write(meta["owner"])
            return self._preupload(kind, repo_id, revision)
        oid = store.resolve(kind, repo_id, revision)
        tree = store.commit(kind, repo_id, oid)["tree"]
        if action in ("info", "revision"):
            siblings = []
            for path, entry in sorted(tree.items()):
                sibling = {"rfilename": path}
                if query.get("blobs", "").lower() == "true":
                    info = file_info(path, entry)
                    sibling.update(size=info["size"], blobId=info["oid"])
                    if "lfs" in info:
                        lfs = info["lfs"]
                        sibling["lfs"] = {"size": lfs["size"], "sha256": lfs["oid"], "pointerSize": lfs["pointerSize"]}
                siblings.append(sibling)
            commit = store.commit(kind, repo_id, oid)
            return self._json({"id": repo_id, "_id": repo_id, "author": meta["owner"], "sha": oid,
                               "private": meta["private"], "gated": False, "disabled": False, "downloads": 0,
                               "likes": 0, "tags": [], "createdAt": meta["createdAt"],
                               "lastModified": commit["date"], "siblings": siblings})  # fmt: skip
        expand = query.get("expand", "").lower() == "true"
        where = (kind, repo_id, oid)
        if action == "tree" and method == "GET":
            base = "/".join(rest[2:]).strip("/")
            prefix = base + "/" if base else ""
            below = [p for p in sorted(tree) if p.startswith(prefix)]
            if base and not below:
                raise HubError(404, f"Path {base} not found", "EntryNotFound")
            recursive = query.get("recursive", "").lower() == "true"
            out, dirs = [], set()
            for path in below:
                segments = path[len(prefix) :].split("/")
                for depth in range(1, len(segments) if recursive else min(2, len(segments))):
                    folder = prefix + "/".join(segments[:depth])
                    if folder not in dirs:
                        dirs.add(folder)
                        out.append(
                            {"type": "directory", "path": folder, "size": 0, "oid": git_blob_oid(folder.encode())}
                        )
                if recursive or len(segments) == 1:
                    out.append(file_info(path, tree[path], store if expand else None, where))
            return self._json(out)
        if action == "paths-info" and method == "POST":
            raw = self._body()
            if self.headers.get("Content-Type", "").startswith("application/json"):
                body = json.loads(raw)
                paths, expand = body.get("paths", []), bool(body.get("expand"))
            else:
                form = parse_qs(raw.decode())
                paths, expand = form.get("paths", []), form.get("expand", ["False"])[-1].lower() == "true"
            out = []
            for path in paths:
                path = path.strip("/")
                if path in tree:
                    out.append(file_info(path, tree[path], store if expand else None, where))
                elif any(p.startswith(path + "/") for p in tree):
                    out.append({"type": "directory", "path": path, "size": 0, "oid": git_blob_oid(path.encode())})
            return self._json(out)
        raise HubError(404, f"No route for {method} {self.path}")

    def _preupload(self, kind: str, repo_id: str, revision: str) -> None:
        """Decide regular vs LFS per file, and return the current oid so the client can skip unchanged files."""
        store = self.server.hub.store
        tree = store.commit(kind, repo_id, store.resolve(kind, repo_id, revision))["tree"]
        files = []
        for f in json.loads(self._body())["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["size"] > LFS_THRESHOLD or f["path"].endswith(LFS_SUFFIXES) or b"\0" in sample
            entry = tree.get(f["path"])
            oid = None
            if entry is not None:
                oid = entry["sha256"] if entry["lfs"] else entry.get("oid")
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})  # fmt: skip
        self._json({"files": files})

    def _commit(self, kind: str, repo_id: str, revision: str) -> None:
        """NDJSON: one header line, then file / lfsFile / deletedFile / deletedFolder lines."""
        store = self.server.hub.store
        header, ops = {}, []
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                data = base64.b64decode(value["content"])
                entry = {"sha256": store.put_blob(data), "size": len(data), "lfs": False, "oid": git_blob_oid(data)}
                ops.append(("add", value["path"], entry))
            elif key == "lfsFile":
                blob = store.blob_path(value["oid"])
                if not blob.exists() or blob.stat().st_size != value["size"]:
                    raise HubError(422, f"LFS object {value['oid']} was not uploaded")
                ops.append(("add", value["path"], {"sha256": value["oid"], "size": value["size"], "lfs": True}))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append(("delete" if key == "deletedFile" else "delete_folder", value["path"]))
            else:
                raise HubError(400, f"Unsupported commit operation {key}")
        title = header.get("summary") or "commit"
        oid = store.apply(kind, repo_id, revision, title, header.get("parentCommit"), ops)
        prefix = "" if kind == "models" else f"{kind}/"
        url = f"{self.server.hub.endpoint}/{prefix}{repo_id}/commit/{oid}"
        self._json({"success": True, "commitOid": oid, "commitUrl": url, "hookOutput": ""})

    def _lfs_batch(self, kind: str, repo_id: str) -> None:
        """Git LFS batch API, basic transfer: upload straight to this server, then verify."""
        self._need_write(self._repo(kind, repo_id)["owner"])
        body = json.loads(self._body())
        objects = []
        for obj in body["objects"]:
            out = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            blob = self.server.hub.store.blob_path(obj["oid"])
            if not blob.exists():
                href = f"{self.server.hub.endpoint}/_lfs/{obj['oid']}"
                out["actions"] = {"upload": {"href": href}, "verify": {"href": f"{href}/verify"}}
            objects.append(out)
        self._json({"transfer": "basic", "objects": objects}, ctype="application/vnd.git-lfs+json")

    def _lfs_object(self, method: str, oid: str, verify: bool) -> None:
        store = self.server.hub.store
        if verify and method == "POST":
            body = json.loads(self._body())
            blob = store.blob_path(oid)
            if not blob.exists() or blob.stat().st_size != body["size"]:
                raise HubError(404, f"LFS object {oid} not found")
            return self._json({"success": True})
        if method == "PUT":
            data = self._body()
            if hashlib.sha256(data).hexdigest() != oid:
                raise HubError(400, "sha256 of the uploaded content does not match the oid")
            store.put_blob(data)
            return self._send(200)
        raise HubError(405, "Method not allowed")

    def _resolve(self, kind: str, repo_id: str, revision: str, path: str) -> None:
        """File download with the headers `hf_hub_download` relies on, including HTTP Range requests."""
        store = self.server.hub.store
        self._repo(kind, repo_id)
        oid = store.resolve(kind, repo_id, revision)
        entry = store.commit(kind, repo_id, oid)["tree"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        data = store.blob_path(entry["sha256"]).read_bytes()
        headers = {"X-Repo-Commit": oid, "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"ETag": f'"{entry["sha256"]}"', "X-Linked-Etag": f'"{entry["sha256"]}"',
                            "X-Linked-Size": str(entry["size"])})  # fmt: skip
        else:
            headers["ETag"] = f'"{entry["oid"]}"'
        status, rng = 200, self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start, _, end = rng[6:].split(",")[0].partition("-")
            first = len(data) - int(end) if not start else int(start)
            last = len(data) - 1 if (not start or not end) else min(int(end), len(data) - 1)
            if first >= len(data) or first > last:
                headers["Content-Range"] = f"bytes */{len(data)}"
                return self._send(416, b"", headers)
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            status, data = 206, data[max(first, 0) : last + 1]
        self._send(status, data, headers, ctype="application/octet-stream")


class LocalHub:
    """Run the fake Hub on 127.0.0.1 on a free port, in a background thread.

    `tokens` maps a token string to `(user, "read" | "write")`. Use as a context manager:

        with LocalHub(tmp_path, tokens={"hf_w": ("alice", "write")}) as hub:
            env = hub.env(token="hf_w")  # HF_ENDPOINT etc. for a client subprocess
    """

    def __init__(self, root: str | os.PathLike, tokens: dict[str, tuple[str, str]] | None = None):
        self.store = Store(Path(root))
        self.tokens = dict(tokens or {})
        self.faults = Faults()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.hub = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self, token: str | None = None, home: str | os.PathLike | None = None) -> dict[str, str]:
        """Environment variables that point the real clients (in a fresh process) at this server."""
        env = {"HF_ENDPOINT": self.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
               "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
        if token is not None:
            env["HF_TOKEN"] = token
        if home is not None:
            home = Path(home)
            env.update(HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"), HF_DATASETS_CACHE=str(home / "datasets"))
        return env

    def point_clients(self, monkeypatch, token: str | None, home: str | os.PathLike) -> None:
        """For a pytest fixture: set `env()` (inherited by subprocesses) and re-point this process's
        `huggingface_hub.constants`, which were read from the environment at import time."""
        import huggingface_hub.constants as constants

        for key, value in self.env(token=token, home=home).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(constants, "ENDPOINT", self.endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(Path(home) / "hub"))
        import datasets.config

        monkeypatch.setattr(datasets.config, "HF_ENDPOINT", self.endpoint)
        monkeypatch.setattr(
            datasets.config, "HUB_DATASETS_URL", self.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
        )
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
