"""Run the server: bind, answer /health while the model loads, serve, shut down cleanly.

The socket is bound here (not by uvicorn), so a port in use is a one-line error
and ``--port 0`` picks a free port (the line on stderr says which). SIGTERM and
SIGINT stop the listener, give in-flight requests ``grace_s`` to finish, cancel
the rest (their KV freed), close the runtime and return 0.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import signal
import socket
import threading
from typing import IO, TYPE_CHECKING, Callable

from edgescale.errors import EdgescaleError, UsageError
from edgescale.serve.state import ServeConfig, ServerState

if TYPE_CHECKING:
    from edgescale.api import Runtime


CANCEL_S = 5.0  # after the grace: time for cancelled queries to send their last chunk


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, which at shutdown first gives in-flight requests the grace and
        then cancels their queries, so that each still gets a complete response (its
        finish_reason "cancelled") before uvicorn would cut the connections."""

        def __init__(self, state: ServerState, config: uvicorn.Config) -> None:
            super().__init__(config)
            self.state = state

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            import asyncio

            grace = max(0.0, (self.config.timeout_graceful_shutdown or 0) - CANCEL_S)
            timer = asyncio.get_running_loop().call_later(grace, self.state.cancel_all)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

    return Server


def _protocol_class(read_timeout_s: float) -> type:
    """uvicorn's h11 protocol with a deadline on each request's head: a connection that has
    not sent a whole request line and headers ``read_timeout_s`` after it opened (or after
    its previous response) is closed. uvicorn itself times out only idle keep-alive
    connections, so a client that trickles its headers would hold a connection forever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _waiting_after: object = None  # the request cycle the timer was armed after

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not self._waiting_after:  # a new request's head has arrived
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self._waiting_after = self.cycle
                self._head_timer = self.loop.call_later(read_timeout_s, self._head_too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return Protocol


def exposure_warning(address: str, api_key: str | None) -> str | None:
    """The warning for a listener other machines can reach with no API key (None: loopback,
    or a key is set). ``address``: the bound IP address."""
    if api_key is not None or ipaddress.ip_address(address.split("%")[0]).is_loopback:
        return None
    shown = f"[{address}]" if ":" in address else address
    return (f"warning: listening on {shown}, which other machines can reach, without --api-key: anyone who can "
            f"reach it can use this server (set --api-key or EDGESCALE_API_KEY, or --host 127.0.0.1)")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (IPv6 when the host is an IPv6 address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(512)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def serve(config: ServeConfig, model_id: str, load: Callable[[], tuple[Runtime, str]],
          notify: Callable[[str], None], log_stream: IO[str] | None = None) -> int:
    """Serve until a signal; ``load`` (run in a thread) returns the runtime and a one-line
    description. Returns the exit code: 0 after a clean stop, the load error's code if
    the model failed to load."""
    import uvicorn

    from edgescale.serve.app import build_app
    from edgescale.serve.gate import AccessLog, Gate

    sock = bind(config.host, config.port)
    state = ServerState(config, model_id)
    app = Gate(build_app(state), state, AccessLog(log_stream))
    server = _server_class()(state, uvicorn.Config(
        app, log_config=None, log_level="warning", access_log=False, lifespan="off",
        timeout_graceful_shutdown=math.ceil(config.grace_s + CANCEL_S), timeout_keep_alive=5,
        http=_protocol_class(config.read_timeout_s), h11_max_incomplete_event_size=config.max_header_bytes,
        limit_concurrency=config.max_connections,
    ))

    def loader() -> None:
        try:
            runtime, description = load()
        except EdgescaleError as exc:
            state.failed(exc)
            notify(f"error: {exc}")
            server.should_exit = True
            return
        except Exception as exc:  # noqa: BLE001  (whatever stops the load must stop the server, said once)
            state.failed(exc)
            notify(f"error: the model failed to load: {type(exc).__name__}: {exc}")
            server.should_exit = True
            return
        state.ready(runtime, fingerprint=f"edgescale-{runtime.engine.backend_version}")
        notify(f"ready: {description}")

    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    notify(f"listening on http://{shown}:{port} (model {model_id} loading)")
    warning = exposure_warning(host, config.api_key)
    if warning is not None:
        notify(warning)
    # uvicorn re-raises the signal it caught once it has shut down; a handler of ours
    # that ignores it makes that a clean exit (status 0) instead of death by SIGTERM.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    threading.Thread(target=loader, name="edgescale-load", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        state.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if state.error is not None:
        return getattr(state.error, "exit_code", 1)
    notify("stopped")
    return 0
