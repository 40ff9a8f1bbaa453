"""The HTTP application: OpenAI's routes on Starlette, every query through the shared scheduler.

A completion request is validated (``serve.protocol``), tokenized in a worker
thread, submitted to the runtime's scheduler and awaited; the scheduler's
thread hands streamed tokens to the event loop with ``call_soon_threadsafe``.
A client that goes away (mid-stream or while waiting) cancels its query: the
scheduler ends it at the next step boundary and frees its KV cells.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import Future
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgescale.errors import BudgetInfeasible, ContextOverflow, EdgescaleError, QueueFull
from edgescale.runtime.token_logprobs import TokenLogprob, prompt_logprobs, token_logprobs
from edgescale.serve import protocol as proto
from edgescale.serve.metrics import metrics_response
from edgescale.serve.protocol import ApiError, Call
from edgescale.serve.state import ServerState
from edgescale.serve.tools import tool_call_deltas
from edgescale.strategies.policy import DEFAULT_POLICY
from edgescale.strategies.spec import Auto, samples_of

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

    from edgescale.api import Runtime
    from edgescale.runtime.generate import BatchGenerator, TokenEvent
    from edgescale.scheduler.request import Request
    from edgescale.strategies.result import Result

Deltas = list[tuple[int, str, "tuple[TokenLogprob, ...]"]]  # (choice index, new text, its tokens) of one step


def build_app(state: ServerState) -> Starlette:
    """The ASGI app (wrap it in :class:`edgescale.serve.gate.Gate` for auth, limits and the log)."""

    async def chat(request: HttpRequest) -> Response:
        return await _complete(state, request, chat=True)

    async def completions(request: HttpRequest) -> Response:
        return await _complete(state, request, chat=False)

    async def models(request: HttpRequest) -> Response:
        return JSONResponse({"object": "list", "data": [_model_card(state)]})

    async def model(request: HttpRequest) -> Response:
        if request.path_params["name"] != state.model_id:
            raise ApiError(404, f"the model {request.path_params['name']!r} does not exist; this server "
                                f"serves {state.model_id!r}", code="model_not_found")
        return JSONResponse(_model_card(state))

    async def health(request: HttpRequest) -> Response:
        status = state.status
        body: dict[str, Any] = {"status": "ok" if status == "ready" else status, "model": state.model_id}
        if state.error is not None:
            body["error"] = str(state.error)
        return JSONResponse(body, status_code=200 if status == "ready" else 503)

    async def metrics(request: HttpRequest) -> Response:
        return metrics_response(state)

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    handlers: dict[Any, Callable[..., Any]] = {ApiError: _api_error, HTTPException: _http_error}
    return Starlette(routes=routes, exception_handlers=handlers)


def _model_card(state: ServerState) -> dict[str, Any]:
    return {"id": state.model_id, "object": "model", "created": 0, "owned_by": "edgescale"}


async def _api_error(request: HttpRequest, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_error(request: HttpRequest, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(ApiError(exc.status_code, message, code=code))


def error_response(exc: ApiError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


# -- completions ---------------------------------------------------------------------------
async def _complete(state: ServerState, http: HttpRequest, *, chat: bool) -> Response:
    arrival = http.scope.get("state", {}).get("arrival") or time.perf_counter()
    runtime = state.runtime
    if state.status != "ready" or runtime is None:
        why = "the model is still loading" if state.status == "loading" else f"the server is {state.status}"
        raise ApiError(503, f"{why}; try again shortly", kind="server_error", code="unavailable",
                       headers={"Retry-After": "1"})
    body = await _read_json(http, state.config.limits.max_body_bytes, state.config.read_timeout_s)
    call = proto.parse_call(body, chat=chat, defaults=state.config.defaults, limits_=state.config.limits)
    http.state.log = {"strategy": call.settings.strategy.spec(), "n": call.n, "stream": call.stream}
    loop = asyncio.get_running_loop()
    deltas: asyncio.Queue[Deltas] = asyncio.Queue()
    on_step = _forwarder(loop, deltas, call) if call.stream and call.streams_tokens else None
    request = await asyncio.to_thread(_prepare, runtime, call, state, on_step, arrival)
    prompt = await _prompt_logprobs(runtime, call, request)
    try:
        future = runtime.scheduler.submit(request)
    except QueueFull as exc:
        state.counters.queue_full += 1
        raise ApiError(429, f"the server is busy: {exc}; retry later", kind="rate_limit_error",
                       code="queue_full", headers={"Retry-After": str(state.retry_after())}) from None
    state.track(request)
    if call.stream:
        stream = _events(state, call, future, deltas, http, prompt)
        return EventStream(stream, on_gone=partial(_gone, state, request), on_close=partial(state.untrack, request))
    try:
        result = await _until_done(future, http.receive)
    except asyncio.CancelledError:  # the shutdown grace ran out
        request.cancel()
        raise
    finally:
        state.untrack(request)
    if result is None:
        _gone(state, request)
        return Response(status_code=499)  # nobody reads it: the client closed the connection
    _account(state, http, result)
    return JSONResponse(proto.response(call, result, state.model_id, state.fingerprint, prompt))


async def _prompt_logprobs(runtime: Runtime, call: Call, request: Request) -> tuple[TokenLogprob, ...] | None:
    """The prompt's token records for ``echo`` with ``logprobs``: one more read of the prompt,
    logits on every position, run in the scheduler's thread between steps."""
    if not (call.extras.echo and call.extras.logprobs):
        return None
    tokens, top = list(request.prompt_tokens), call.extras.top_logprobs
    try:
        return await asyncio.wrap_future(runtime.scheduler.call(lambda engine: prompt_logprobs(engine, tokens, top)))
    except EdgescaleError as exc:
        raise ApiError(400, f"echo with logprobs: {exc}", param="echo") from None


async def _read_json(http: HttpRequest, limit: int, timeout_s: float) -> Any:
    """The body as JSON: at most ``limit`` bytes (also without a Content-Length: a chunked
    body is counted as it comes), all of it within ``timeout_s``."""
    try:
        body = await asyncio.wait_for(_read_body(http, limit), timeout_s)
    except ClientDisconnect:
        raise ApiError(400, "the client closed the connection before sending the body") from None
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g}s (--read-timeout)",
                       code="request_timeout", headers={"Connection": "close"}) from None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None


async def _read_body(http: HttpRequest, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in http.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body exceeds {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _prepare(runtime: Runtime, call: Call, state: ServerState,
             on_step: Callable[[BatchGenerator, Sequence[TokenEvent]], None] | None, arrival: float) -> Request:
    """Tokenize and plan-on-admission (in a worker thread: a long prompt would stall the loop)."""
    s = call.settings
    budget = s.budget
    if budget.deadline_s is not None:
        budget = replace(budget, deadline_s=state.decode_deadline(budget.deadline_s))
    try:
        request = runtime.request(call.prompt, strategy=s.strategy, budget=budget, options=s.options,
                                  on_step=on_step, arrival=arrival, exact_samples=call.n > 1)
    except ContextOverflow as exc:
        raise ApiError(400, str(exc), param="messages" if call.chat else "prompt",
                       code="context_length_exceeded") from None
    except EdgescaleError as exc:
        raise ApiError(400, str(exc)) from None
    escalation = (request.policy or DEFAULT_POLICY).escalation if isinstance(request.strategy, Auto) else None
    if escalation is not None:  # what auto may escalate to counts against the cap too
        refusal = state.config.limits.samples_refusal(samples_of(escalation), f"auto (escalating to "
                                                      f"{escalation.spec()})", "strategy")
        if refusal is not None:
            raise refusal
    limit = state.config.limits.max_prompt_tokens
    if len(request.prompt_tokens) > limit:
        raise ApiError(400, f"the prompt is {len(request.prompt_tokens)} tokens; this server takes at most "
                            f"{limit}", param="messages" if call.chat else "prompt",
                       code="context_length_exceeded")
    return request


def _forwarder(loop: asyncio.AbstractEventLoop, deltas: asyncio.Queue[Deltas],
               call: Call) -> Callable[[BatchGenerator, Sequence[TokenEvent]], None]:
    """The scheduler-thread callback that hands each step's new text to the event loop."""

    sent = [0] * call.n  # tokens of each choice whose logprobs went out

    def on_step(gen: BatchGenerator, events: Sequence[TokenEvent]) -> None:
        new: Deltas = []
        for ev in events:
            if ev.index >= call.n:
                continue
            records: tuple[TokenLogprob, ...] = ()
            if call.extras.logprobs:
                st = gen.states[ev.index]
                records = token_logprobs(gen.engine, st.tokens[sent[ev.index]:], st.logprobs[sent[ev.index]:],
                                         st.top_logprobs[sent[ev.index]:])
                sent[ev.index] = len(st.tokens)
            if ev.delta or records:
                new.append((ev.index, ev.delta, records))
        if new:
            try:
                loop.call_soon_threadsafe(deltas.put_nowait, new)
            except RuntimeError:  # the loop has closed: the server is gone
                pass

    return on_step


async def _until_done(future: Future[Result], receive: Receive) -> Result | None:
    """The query's result, or None when the client disconnects first."""
    done = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnect(receive))
    try:
        waiters: set[asyncio.Future[Any]] = {done, gone}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if done.done():
        return _result(done)
    done.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)  # nobody will read it
    return None


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _result(done: asyncio.Future[Result]) -> Result:
    try:
        return done.result()
    except BudgetInfeasible as exc:
        raise ApiError(400, str(exc), code="budget_infeasible") from None
    except EdgescaleError as exc:
        raise ApiError(500, str(exc), kind="server_error", code=type(exc).__name__) from None


def _gone(state: ServerState, request: Request) -> None:
    request.cancel()
    state.counters.disconnects += 1


def _account(state: ServerState, http: HttpRequest, result: Result) -> None:
    http.state.answered_at = time.perf_counter()
    s = result.stats
    state.finished(s.wall_s, "deadline" in result.stop_reason)
    http.state.log.update(prompt_tokens=s.prompt_tokens, cached_tokens=s.cached_prompt_tokens,
                          completion_tokens=s.total_tokens, stop_reason=result.stop_reason,
                          queue_ms=round(s.queue_s * 1000, 1))


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


async def _events(state: ServerState, call: Call, future: Future[Result], deltas: asyncio.Queue[Deltas],
                  http: HttpRequest, prompt: tuple[TokenLogprob, ...] | None) -> AsyncIterator[bytes]:
    """The SSE body: token deltas as the scheduler makes them, then the finish and ``[DONE]``."""
    model, fp = state.model_id, state.fingerprint
    streamed = [""] * call.n
    offsets = [0] * call.n  # characters of each choice sent (echoed prompt included): logprobs' text_offset
    if call.chat:
        yield _sse(proto.chunk(call, model, fp, [proto.delta(call, i, None, role=True) for i in range(call.n)]))
    head = proto.echoed(call)
    if head:  # echo: each choice starts with its prompt (and the prompt's logprobs)
        for i in range(call.n):
            offsets[i] = len(head)
            yield _sse(proto.chunk(call, model, fp, [proto.delta(call, i, head, logprobs=prompt)]))
    done = asyncio.wrap_future(future)

    def flush(step: Deltas) -> list[bytes]:
        out = []
        for index, text, records in step:
            streamed[index] += text
            d = proto.delta(call, index, text, logprobs=records, offset=offsets[index])
            offsets[index] += len(text)
            out.append(_sse(proto.chunk(call, model, fp, [d])))
        return out

    while not done.done():
        getter = asyncio.ensure_future(deltas.get())
        try:
            waiters: set[asyncio.Future[Any]] = {getter, done}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pending = not getter.done()
            if pending:
                getter.cancel()
        if pending:  # the result came first; the steps before it are drained below
            break
        for data in flush(getter.result()):
            yield data
    while not deltas.empty():  # steps handed over before the result
        for data in flush(deltas.get_nowait()):
            yield data
    try:
        result = _result(done)
    except ApiError as exc:
        yield _sse(exc.body())
        yield b"data: [DONE]\n\n"
        return
    _account(state, http, result)
    choices = proto.choices_of(call, result)
    for i, (text, reason, sample) in enumerate(choices):
        records = None
        if not call.streams_tokens:
            rest = text
            records = sample.logprobs if sample is not None else None  # the whole text comes now
        else:  # what the deltas held back (a stop string's prefix that was not one); never a repeat
            rest = text[len(streamed[i]):] if text.startswith(streamed[i]) else ""
        extra = {"edgescale": proto.edgescale_fields(result, call)} if i == len(choices) - 1 else {}
        calls = tool_call_deltas(call.tools, i, text, reason) if call.chat and call.tools is not None else None
        if calls is not None:  # a tool call: its name, then its arguments, then the finish
            for d in calls[:-1]:
                yield _sse(proto.chunk(call, model, fp, [d]))
            yield _sse(proto.chunk(call, model, fp, [calls[-1]], **extra))
            continue
        d = proto.delta(call, i, rest, reason, logprobs=records, offset=offsets[i])
        yield _sse(proto.chunk(call, model, fp, [d], **extra))
    if call.include_usage:
        yield _sse(proto.chunk(call, model, fp, [], usage=proto.usage(result)))
    yield b"data: [DONE]\n\n"


class EventStream(Response):
    """A ``text/event-stream`` response that notices a client going away at once: the
    body is sent while another task waits for ``http.disconnect`` (whatever ASGI spec
    version the server speaks), and ``on_gone`` runs when the client leaves first."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], *, on_gone: Callable[[], None],
                 on_close: Callable[[], None]) -> None:
        # no Response.__init__: it would declare a Content-Length of 0
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.stream, self.on_gone, self.on_close = body, on_gone, on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for data in self.stream:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        body = asyncio.ensure_future(pump())
        gone = asyncio.ensure_future(_disconnect(receive))
        try:
            await asyncio.wait({body, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when cancelled (the shutdown grace ran out): the query must not outlive us
            failure = body.exception() if body.done() and not body.cancelled() else None
            if failure is not None and not isinstance(failure, OSError):
                logging.getLogger(__name__).error("a streamed response failed", exc_info=failure)
            if not body.done() or body.cancelled() or failure is not None:
                self.on_gone()
            for task in (body, gone):
                task.cancel()
            await _settle(body, gone)
            await self.stream.aclose()  # type: ignore[attr-defined]
            self.on_close()


async def _settle(*tasks: Awaitable[Any]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
