#!/usr/bin/env python3
"""Fake Hugging Face Hub for the `squish pull` integration tests.

A small, standard-library-only HTTP server that serves local directories as
Hub model repos, so the Rust tests never touch the network.  It mirrors the
parts of huggingface.co that a downloader relies on:

* GET /api/models/ORG/NAME[/revision/REV]: repo info with commit `sha`,
  `gated` and `siblings` (size, blobId, and `lfs` {sha256,size} for LFS files).
* GET/HEAD /ORG/NAME/resolve/REV/PATH: regular files answer 307 with a relative
  Location, /api/resolve-cache/models/ORG/NAME/COMMIT/PATH, which serves them with
  ETag = git blob sha1 and X-Repo-Commit (as the Hub does today); LFS files (*.safetensors, *.gguf,
  *.bin, *.pt) answer 302 to an absolute CDN URL with X-Linked-Etag (sha256)
  and X-Linked-Size, as the Hub does.
* GET/HEAD /cdn/SHA256: the "CDN", no auth, with Range support (206/416).
* Error semantics: X-Error-Code RepoNotFound (401 anonymous / 404 with token,
  so private repos do not leak), RevisionNotFound, EntryNotFound, and
  GatedRepo (401 without token, 403 with a wrong one).

Test hooks: --drop-after N cuts the first /cdn GET that would send more than N
body bytes after N bytes (to exercise resumption with `Range: bytes=N-`), and
GET /_log returns every request seen so far.
Prints `listening on http://127.0.0.1:PORT` once ready, then serves forever.
"""
import argparse
import hashlib
import json
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, repo_id, root):
        self.id, self.files = repo_id, {}
        for dirpath, _, names in os.walk(root):
            for name in names:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                with open(full, "rb") as f:
                    data = f.read()
                info = {"disk": full, "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "lfs": rel.endswith(LFS_SUFFIXES)}
                if info["lfs"]:
                    # git stores only a pointer for LFS files; its blob sha1 is the ETag.
                    pointer = ("version https://git-lfs.github.com/spec/v1\n"
                               "oid sha256:%s\nsize %d\n" % (info["sha256"], len(data))).encode()
                    info["git_sha1"], info["pointer_size"] = git_blob_sha1(pointer), len(pointer)
                else:
                    info["git_sha1"] = git_blob_sha1(data)
                self.files[rel] = info
        # Deterministic commit id: changes iff any path or content changes.
        listing = "".join("%s\0%s\n" % (p, self.files[p]["sha256"]) for p in sorted(self.files))
        self.commit = hashlib.sha1(listing.encode()).hexdigest()

    def info(self, gated):
        siblings = []
        for path in sorted(self.files):
            f = self.files[path]
            s = {"rfilename": path, "size": f["size"], "blobId": f["git_sha1"]}
            if f["lfs"]:
                s["lfs"] = {"sha256": f["sha256"], "size": f["size"],
                            "pointerSize": f["pointer_size"]}
            siblings.append(s)
        return {"_id": hashlib.sha1(self.id.encode()).hexdigest()[:24], "id": self.id,
                "modelId": self.id, "sha": self.commit, "private": False,
                "gated": "manual" if gated else False,
                "cardData": {"license": "apache-2.0"}, "siblings": siblings}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response sets Content-Length
    server_version = "fake-hub/1"

    def log_message(self, fmt, *args):
        if os.environ.get("FAKE_HUB_VERBOSE"):
            super().log_message(fmt, *args)

    def do_HEAD(self): self.route(head=True)  # noqa: E704
    def do_GET(self): self.route(head=False)  # noqa: E704

    # --- response helpers -------------------------------------------------
    def reply(self, status, body=b"", headers=(), head=False):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def json_reply(self, status, obj, headers=(), head=False):
        self.reply(status, json.dumps(obj).encode(),
                   [("Content-Type", "application/json")] + list(headers), head)

    def error(self, status, code, message, head):
        self.json_reply(status, {"error": message}, [("X-Error-Code", code)], head)

    def auth_state(self):
        """None: no Authorization header; True: the right token; False: wrong."""
        h = self.headers.get("Authorization")
        if h is None:
            return None
        token = self.server.token
        return token is not None and h == "Bearer " + token

    # --- routing ----------------------------------------------------------
    def route(self, head):
        path = urlsplit(self.path).path
        if path == "/_log":
            return self.json_reply(200, self.server.snapshot_log(), head=head)
        self.server.record({"method": self.command, "path": self.path,
                            "range": self.headers.get("Range"),
                            "auth": "Authorization" in self.headers})
        parts = path.strip("/").split("/")
        if parts[0] == "cdn" and len(parts) == 2:
            return self.serve_cdn(parts[1], head)
        if parts[:3] == ["api", "resolve-cache", "models"] and len(parts) >= 7:
            repo_id = unquote(parts[3]) + "/" + unquote(parts[4])
            repo = self.find_repo(repo_id, head)
            if repo and self.check_gate(repo_id, head) and self.check_rev(repo, unquote(parts[5]), head):
                f = repo.files.get(unquote("/".join(parts[6:])))
                if f is None:
                    return self.error(404, "EntryNotFound", "Entry not found", head)
                common = [("X-Repo-Commit", repo.commit), ("ETag", '"%s"' % f["git_sha1"])]
                self.serve_content(f, common, head, cdn=False)
            return
        if parts[0] == "api" and len(parts) >= 4 and parts[1] == "models":
            repo_id, rest = unquote(parts[2]) + "/" + unquote(parts[3]), parts[4:]
            if rest and not (len(rest) == 2 and rest[0] == "revision"):
                return self.error(404, "EntryNotFound", "Not found", head)
            repo = self.find_repo(repo_id, head)
            if repo and self.check_rev(repo, unquote(rest[1]) if rest else "main", head):
                gated = repo_id in self.server.gated
                self.json_reply(200, repo.info(gated), head=head)
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id = unquote(parts[0]) + "/" + unquote(parts[1])
            repo = self.find_repo(repo_id, head)
            if repo and self.check_gate(repo_id, head) and \
                    self.check_rev(repo, unquote(parts[3]), head):
                self.serve_resolve(repo, unquote("/".join(parts[4:])), head)
            return
        self.error(404, "EntryNotFound", "Not found", head)

    def find_repo(self, repo_id, head):
        repo = self.server.repos.get(repo_id)
        if repo is None:
            # The Hub answers 401 to anonymous callers so private repos do not leak.
            status = 404 if self.auth_state() else 401
            self.error(status, "RepoNotFound", "Repository not found", head)
        return repo

    def check_rev(self, repo, rev, head):
        if rev in ("main", repo.commit):
            return True
        self.error(404, "RevisionNotFound", "Invalid rev id: " + rev, head)
        return False

    def check_gate(self, repo_id, head):
        auth = self.auth_state()
        if repo_id not in self.server.gated or auth:
            return True
        msg = ("Access to model %s is restricted. You must have access to it and be "
               "authenticated to access it. Please log in." % repo_id)
        self.error(401 if auth is None else 403, "GatedRepo", msg, head)
        return False

    def serve_resolve(self, repo, path, head):
        f = repo.files.get(path)
        if f is None:
            return self.error(404, "EntryNotFound", "Entry not found", head)
        common = [("X-Repo-Commit", repo.commit), ("ETag", '"%s"' % f["git_sha1"])]
        if f["lfs"]:
            # LFS content lives on a separate CDN host; the Hub redirects there.
            port = self.server.server_address[1]
            loc = "http://127.0.0.1:%d/cdn/%s" % (port, f["sha256"])
            return self.reply(302, b"", common + [
                ("Location", loc), ("X-Linked-Etag", '"%s"' % f["sha256"]),
                ("X-Linked-Size", str(f["size"]))], head)
        # Small files: a relative redirect within the Hub (the token must follow it).
        loc = "/api/resolve-cache/models/%s/%s/%s" % (repo.id, repo.commit, quote(path))
        self.reply(307, b"", common + [("Location", loc)], head)

    def serve_cdn(self, sha, head):
        f = self.server.by_sha256.get(sha)
        if f is None:
            return self.error(404, "EntryNotFound", "Entry not found", head)
        self.serve_content(f, [("ETag", '"%s"' % sha)], head, cdn=True)

    def serve_content(self, f, headers, head, cdn):
        total, start, end, status = f["size"], 0, f["size"] - 1, 200
        headers = headers + [("Accept-Ranges", "bytes"),
                             ("Content-Type", "application/octet-stream")]
        rng = self.headers.get("Range", "")
        a, _, b = rng[6:].strip().partition("-")
        if rng.startswith("bytes=") and a.isdigit() and (b == "" or b.isdigit()):
            start, end = int(a), min(int(b), total - 1) if b else total - 1
            if start >= total or end < start:
                return self.reply(416, b"", headers + [
                    ("Content-Range", "bytes */%d" % total)], head)
            status = 206
            headers.append(("Content-Range", "bytes %d-%d/%d" % (start, end, total)))
        # Malformed, suffix or multi-range headers are ignored: plain 200, full body.
        length = end - start + 1
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if head or length <= 0:
            return
        with open(f["disk"], "rb") as fh:
            fh.seek(start)
            body = fh.read(length)
        if cdn and self.server.take_drop(length):
            # Simulated network failure: promise `length` bytes, send only N, hang up.
            self.wfile.write(body[:self.server.drop_after])
            self.wfile.flush()
            self.close_connection = True  # stop the keep-alive loop on this socket
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.connection.close()
            return
        self.wfile.write(body)


class FakeHub(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port, repos, gated, token, drop_after):
        super().__init__(("127.0.0.1", port), Handler)
        self.repos, self.gated, self.token = repos, gated, token
        self.drop_after, self._dropped = drop_after, False
        self.by_sha256 = {f["sha256"]: f for r in repos.values() for f in r.files.values()}
        self._log, self._lock = [], threading.Lock()

    def record(self, entry):
        with self._lock:
            self._log.append(entry)

    def snapshot_log(self):
        with self._lock:
            return list(self._log)

    def take_drop(self, length):
        """True exactly once: for the first CDN body longer than --drop-after."""
        with self._lock:
            if self.drop_after is None or self._dropped or length <= self.drop_after:
                return False
            self._dropped = True
            return True

    def handle_error(self, request, client_address):
        # Clients hanging up mid-response is expected in these tests; stay quiet.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


def main():
    p = argparse.ArgumentParser(description="Fake Hugging Face Hub for tests")
    p.add_argument("--repo", action="extend", nargs="+", default=[], metavar="ORG/NAME=DIR")
    p.add_argument("--gated", action="extend", nargs="+", default=[], metavar="ORG/NAME")
    p.add_argument("--token")
    p.add_argument("--drop-after", type=int, metavar="BYTES")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    repos = {}
    for spec in args.repo:
        repo_id, sep, root = spec.partition("=")
        if not sep or repo_id.count("/") != 1 or not os.path.isdir(root):
            p.error("bad --repo %r (want ORG/NAME=DIR with an existing DIR)" % spec)
        repos[repo_id] = Repo(repo_id, root)
    if set(args.gated) - set(repos):
        p.error("--gated repos must also be given as --repo")
    server = FakeHub(args.port, repos, set(args.gated), args.token, args.drop_after)
    print("listening on http://127.0.0.1:%d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
