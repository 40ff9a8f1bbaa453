"""A loopback stand-in for the Hugging Face hub, for the `edgescale pull` tests.

It answers what huggingface_hub and edgescale ask: the repo's file list
(``GET /api/models/ORG/REPO/tree/REV``), a file's metadata (``HEAD .../resolve/REV/FILE``:
ETag, X-Linked-Etag (the sha256), X-Linked-Size, X-Repo-Commit) and its bytes (``GET``,
``Range`` honoured with 206). Plain URLs are served under ``/files/NAME``. Faults are set
per test: cut the connection after N bytes (once), send slowly, lie about the sha256. Every
request is logged (method, path, Range header) so tests can tell what went over the wire.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class MirrorFile:
    data: bytes
    sha256: str = ""  # what the mirror claims (default: the real one)

    def __post_init__(self) -> None:
        self.sha256 = self.sha256 or hashlib.sha256(self.data).hexdigest()


@dataclass
class Mirror:
    repos: dict[str, dict[str, MirrorFile]] = field(default_factory=dict)  # repo -> file name -> file
    files: dict[str, MirrorFile] = field(default_factory=dict)  # /files/NAME
    cut_after: int | None = None  # close the connection after this many body bytes, once
    bytes_per_s: float | None = None  # send at this rate
    log: list[tuple[str, str, str | None]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "Mirror":
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                mirror._serve(self, body=False)

            def do_GET(self) -> None:
                mirror._serve(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def gets(self) -> list[tuple[str, str, str | None]]:
        return [e for e in self.log if e[0] == "GET"]

    def _find(self, path: str) -> tuple[MirrorFile | None, dict[str, object] | None]:
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/?]+).*", path)
        if m:
            repo = self.repos.get(m.group(1))
            if repo is None:
                return None, None
            tree = [{"type": "file", "path": n, "size": len(f.data), "oid": hashlib.sha1(f.data).hexdigest(),
                     "lfs": {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}} for n, f in repo.items()]
            return None, {"tree": tree}
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path.split("?")[0])
        if m:
            return self.repos.get(m.group(1), {}).get(m.group(3)), None
        m = re.fullmatch(r"/files/(.+)", path.split("?")[0])
        return (self.files.get(m.group(1)) if m else None), None

    def _serve(self, h: BaseHTTPRequestHandler, *, body: bool) -> None:
        rng = h.headers.get("Range")
        self.log.append((h.command, h.path, rng))
        found, listing = self._find(h.path)
        if listing is not None:
            data = json.dumps(listing["tree"]).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if body:
                h.wfile.write(data)
            return
        if found is None:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.send_header("X-Error-Code", "EntryNotFound")
            h.end_headers()
            return
        data, start = found.data, 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and body:
            start = int(m.group(1))
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        h.send_header("Content-Length", str(len(data) - start))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{found.sha256}"')
        h.send_header("X-Linked-Etag", f'"{found.sha256}"')
        h.send_header("X-Linked-Size", str(len(data)))
        h.send_header("X-Repo-Commit", COMMIT)
        h.end_headers()
        if not body:
            return
        self._send(h, data[start:])

    def _send(self, h: BaseHTTPRequestHandler, data: bytes) -> None:
        step = 256 << 10
        sent = 0
        cut, self.cut_after = self.cut_after, None
        for at in range(0, len(data), step):
            chunk = data[at : at + step]
            if cut is not None and sent + len(chunk) > cut:
                h.wfile.write(chunk[: cut - sent])
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(2)  # the cable is pulled mid-file
                return
            try:
                h.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return
            sent += len(chunk)
            if self.bytes_per_s:
                time.sleep(len(chunk) / self.bytes_per_s)


def gguf_bytes(path: Path) -> bytes:
    return path.read_bytes()
