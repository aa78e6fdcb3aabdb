"""A stand-in for the Hugging Face hub's file API on 127.0.0.1, for the download tests (HF_ENDPOINT points here).

Written from what huggingface_hub's hf_hub_download asks and reads (its file_download module):

- `HEAD {endpoint}/{repo_id}/resolve/{revision}/{filename}` answers with the file's metadata in headers:
  `X-Repo-Commit` (the commit the revision resolves to; required), `X-Linked-Etag` (for a large LFS file,
  the sha256 of its content, in quotes), `X-Linked-Size` (its size), `ETag`, `Content-Length`;
- `GET` of the same URL sends the bytes; a `Range: bytes=N-` request (how a dropped transfer is picked
  up) gets `206 Partial Content` with `Content-Range`;
- an unknown repo or file is `404` with `X-Error-Code: RepoNotFound` / `EntryNotFound`.

Knobs for the tests: `drop_after` (the first GET sends that many bytes of a full-length answer, then
closes the connection), `wrong_sha256` (announce another checksum than the content's), and `requests`
(every request seen: method, path, Range header; `file_requests()` keeps those for files).
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn:
    def __init__(self):
        self.files: dict = {}  # (repo_id, filename) -> bytes
        self.requests: list = []  # (method, path, range header or None)
        self.drop_after: int | None = None
        self.wrong_sha256 = False
        self._dropped = False
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _lookup(self):
                match = re.match(
                    r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<name>.+)$", self.path.split("?")[0]
                )
                if not match:
                    return None, "RepoNotFound"
                if match["rev"] not in ("main", COMMIT):
                    return None, "RevisionNotFound"
                if not any(repo == match["repo"] for repo, _ in hub.files):
                    return None, "RepoNotFound"
                data = hub.files.get((match["repo"], match["name"]))
                return (data, None) if data is not None else (None, "EntryNotFound")

            def _not_found(self, code):
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _metadata(self, data: bytes):
                sha = hashlib.sha256(data).hexdigest()
                if hub.wrong_sha256:
                    sha = hashlib.sha256(data + b"tampered").hexdigest()
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("Accept-Ranges", "bytes")

            def do_HEAD(self):
                hub.requests.append(("HEAD", self.path, self.headers.get("Range")))
                data, error = self._lookup()
                if data is None:
                    return self._not_found(error)
                self.send_response(200)
                self._metadata(data)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()

            def do_GET(self):
                hub.requests.append(("GET", self.path, self.headers.get("Range")))
                data, error = self._lookup()
                if data is None:
                    return self._not_found(error)
                start = 0
                wanted = self.headers.get("Range")
                if wanted:
                    start = int(re.match(r"bytes=(\d+)-", wanted).group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self._metadata(data)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if hub.drop_after is not None and not hub._dropped:
                    hub._dropped = True
                    self.wfile.write(body[: hub.drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the transfer breaks off mid-body
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, repo_id: str, filename: str, data: bytes) -> None:
        self.files[(repo_id, filename)] = data

    def file_requests(self) -> list:
        """Requests for files (`/resolve/`). huggingface_hub also fetches other hub endpoints on its own
        (e.g. a best-effort registry it caches for a day); those are not downloads."""
        return [r for r in self.requests if "/resolve/" in r[1]]

    def gets(self) -> list:
        return [r for r in self.file_requests() if r[0] == "GET"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
