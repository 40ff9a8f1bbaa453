"""What every HTTP request passes through: the API key, the header and body size limits and the
access log (one JSON object per request on stderr).

A pure ASGI middleware, so it never buffers a streamed response.
"""

from __future__ import annotations

import hmac
import json
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from edgescale.serve.protocol import ApiError
from edgescale.serve.state import ServerState

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


class AccessLog:
    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            out = self.stream or sys.stderr
            out.write(line + "\n")
            out.flush()


class Gate:
    def __init__(self, app: ASGIApp, state: ServerState, log: AccessLog) -> None:
        self.app, self.state, self.log = app, state, log
        key = state.config.api_key
        self._key = key.encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        sent = {"status": 0, "bytes": 0}
        scope.setdefault("state", {})["arrival"] = t0  # a request's deadline counts from here

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            elif message["type"] == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _send_error(counted, refusal)
            else:
                await self.app(scope, receive, counted)
        finally:
            done = time.perf_counter()
            answered = scope["state"].get("answered_at")
            if isinstance(answered, float) and sent["status"] == 200:
                self.state.delivered(done - answered)
            status = sent["status"] or 499  # nothing sent: the client left first
            path = scope.get("path", "")
            self.state.count(path if path.startswith(("/v1/", "/health", "/metrics")) else "other", status)
            client = scope.get("client")
            record = {"ts": round(time.time(), 3), "client": f"{client[0]}:{client[1]}" if client else None,
                      "method": scope.get("method"), "path": path, "status": status,
                      "ms": round((done - t0) * 1000, 1), "bytes": sent["bytes"]}
            extra = scope["state"].get("log")
            if isinstance(extra, dict):
                record.update(extra)
            self.log.write(record)

    def _refusal(self, scope: Scope) -> ApiError | None:
        raw = scope.get("headers", [])
        head = sum(len(k) + len(v) + 4 for k, v in raw)  # as sent: "name: value\r\n"
        if head > self.state.config.max_header_bytes:  # (h11 stops only a head that arrives in pieces)
            return ApiError(431, f"the request headers exceed {self.state.config.max_header_bytes} bytes",
                            code="headers_too_large")
        headers = {k.decode("latin-1").lower(): v for k, v in raw}
        if self._key is not None:  # every route, /health and /metrics included
            auth = headers.get("authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
                return ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        limit = self.state.config.limits.max_body_bytes
        if length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                return ApiError(400, "bad Content-Length header")
            if too_big:
                return ApiError(413, f"the request body exceeds {limit} bytes", code="body_too_large")
        return None


async def _send_error(send: Send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
