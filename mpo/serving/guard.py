"""The server interceptor every service runs behind: request ids, auth, parsing, validation, telemetry.

Order per call: admit from the metadata alone (budget of open calls, then the bearer token) → assign
a request id → parse (undecodable bytes become INVALID_ARGUMENT instead of gRPC's generic INTERNAL)
→ validate (mpo.serving.validation) → run the handler → record metrics and one JSON log
line. An exception escaping a handler becomes INTERNAL with the request id, so a bad request can
never take the server down.

A call refused on its metadata (no budget, bad token) is answered by a handler that never reads the
request stream, so its body is neither parsed nor buffered beyond gRPC's flow-control window.
Health and reflection calls, which need no token, have a budget of their own: idle watch streams
cannot take the slots of real calls.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from mpo.config import RequestLimits
from mpo.serving.auth import INFRASTRUCTURE_PREFIXES, Authenticator
from mpo.serving.telemetry import RpcMetrics, log_rpc
from mpo.serving.validation import InvalidRequest, stream_validator_for, validate_request

REQUEST_ID_KEY = "x-request-id"
#: Requests larger than this are validated in a worker thread (PIL decodes their images).
INLINE_VALIDATION_BYTES = 64 * 1024
#: The request id of the call being handled, for services' own log lines.
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("mpo_request_id", default="")

log = logging.getLogger(__name__)


class _Undecodable:
    """Stands in for a request whose bytes did not parse, so the guard can answer INVALID_ARGUMENT."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.reason = f"request: not a valid {type_name} message ({type(error).__name__})"


def _safe_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    type_name = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    type_name = type_name.full_name if type_name is not None else "protobuf"

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, TypeError) as exc:
            return _Undecodable(type_name, exc)

    return parse


class _Rejected(Exception):
    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


class _Budget:
    """Calls of one kind open at once, and the most there may be."""

    def __init__(self, limit: int, limit_name: str) -> None:
        self.limit, self.limit_name, self.open = limit, limit_name, 0

    @property
    def full(self) -> bool:
        return self.open >= self.limit

    def refusal(self) -> _Rejected:
        return _Rejected(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"server busy: {self.limit} calls of this kind are open ({self.limit_name}); retry later",
        )


class RpcGuard(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        *,
        service: str,
        authenticator: Authenticator,
        limits: RequestLimits,
        metrics: RpcMetrics,
        max_calls: int,
        max_infrastructure_calls: int,
    ):
        self._service = service
        self._auth = authenticator
        self._limits = limits
        self._metrics = metrics
        self._calls = _Budget(max_calls, "max_concurrent_rpcs")
        self._infrastructure = _Budget(max_infrastructure_calls, "max_infrastructure_calls")

    def _budget(self, method: str) -> _Budget:
        return self._infrastructure if method.startswith(INFRASTRUCTURE_PREFIXES) else self._calls

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = tuple(handler_call_details.invocation_metadata or ())
        refusal = self._refusal(method, metadata)
        if refusal is not None:
            return self._refusing_handler(method, metadata, refusal, streaming=handler.response_streaming)
        if handler.request_streaming and handler.response_streaming:
            kind, behavior = "stream_stream", handler.stream_stream
        elif handler.request_streaming:
            kind, behavior = "stream_unary", handler.stream_unary
        elif handler.response_streaming:
            kind, behavior = "unary_stream", handler.unary_stream
        else:
            kind, behavior = "unary_unary", handler.unary_unary
        wrapped = self._wrap(method, metadata, behavior, kind)
        return handler._replace(
            **{kind: wrapped, "request_deserializer": _safe_deserializer(handler.request_deserializer)}
        )

    def _refusal(self, method: str, metadata: tuple) -> _Rejected | None:
        """Why the call is refused on its metadata alone, or None."""
        budget = self._budget(method)
        if budget.full:
            return budget.refusal()
        denied = self._auth.check(method, metadata)
        return _Rejected(*denied) if denied is not None else None

    def _refusing_handler(
        self, method: str, metadata: tuple, refusal: _Rejected, *, streaming: bool
    ) -> grpc.RpcMethodHandler:
        """A request-streaming handler, whatever the method's kind: gRPC reads a streaming request only
        as the handler iterates it, and this one never does."""
        guard = self

        async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
            async with _CallScope(guard, method, metadata, context, budget=None):
                raise refusal

        async def refuse_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await refuse(requests, context)
            yield  # pragma: no cover (never reached: makes this an async generator)

        if streaming:
            return grpc.stream_stream_rpc_method_handler(refuse_stream)
        return grpc.stream_unary_rpc_method_handler(refuse)

    def _wrap(self, method: str, metadata: tuple, behavior: Callable, kind: str) -> Callable:
        guard = self

        if kind.endswith("_unary"):

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with _CallScope(guard, method, metadata, context, budget=guard._budget(method)) as scope:
                    request = await scope.admit(request, kind)
                    return await behavior(request, context)

            return unary_response

        async def streaming_response(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with _CallScope(guard, method, metadata, context, budget=guard._budget(method)) as scope:
                request = await scope.admit(request, kind)
                produced = behavior(request, context)
                if inspect.isasyncgen(produced):
                    async for item in produced:
                        yield item
                else:  # handler writes through context.write()
                    await produced

        return streaming_response


class _CallScope:
    """Everything that brackets one call: id, budget, validation, error mapping, telemetry."""

    def __init__(
        self,
        guard: RpcGuard,
        method: str,
        metadata: tuple,
        context: grpc.aio.ServicerContext,
        *,
        budget: _Budget | None,
    ) -> None:
        """`budget`: the open calls this one counts against (None: a refusal, which holds no slot)."""
        self.guard, self.method, self.metadata, self.context = guard, method, metadata, context
        self.budget: _Budget | None = None
        self._claim = budget
        presented = next((v for k, v in metadata if k == REQUEST_ID_KEY), None)
        self.request_id = str(presented)[:64] if presented else uuid.uuid4().hex[:16]

    async def __aenter__(self) -> _CallScope:
        self.started = time.perf_counter()
        self.token = current_request_id.set(self.request_id)
        self.guard._metrics.in_flight.inc()
        # Trailing, not initial, metadata: response headers would commit the call and disable
        # gRPC's transparent retry of UNAVAILABLE on the client.
        self.context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id),))
        return self

    async def admit(self, request: Any, kind: str) -> Any:
        """Take a slot of the budget (calls admitted together may have passed its first check), then
        check a unary request now or wrap a request stream to check each message."""
        if self._claim is not None:
            if self._claim.full:
                raise self._claim.refusal()
            self._claim.open += 1
            self.budget = self._claim
        if kind.startswith("stream_"):
            return self._checked_stream(request)
        if isinstance(request, _Undecodable):
            raise _Rejected(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        if request.ByteSize() > INLINE_VALIDATION_BYTES:  # e.g. images to decode: keep the event loop free
            await asyncio.to_thread(validate_request, self.method, request, self.guard._limits)
        else:
            validate_request(self.method, request, self.guard._limits)
        return request

    async def _checked_stream(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        validator = stream_validator_for(self.method)
        async for message in requests:
            if isinstance(message, _Undecodable):
                raise _Rejected(grpc.StatusCode.INVALID_ARGUMENT, message.reason)
            if validator is not None:
                validator.feed(message)
            yield message
        if validator is not None:
            validator.finish()

    async def __aexit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> bool:
        code, detail, must_abort = self._outcome(exc)
        seconds = time.perf_counter() - self.started
        self.guard._metrics.in_flight.dec()
        if self.budget is not None:
            self.budget.open -= 1
        self.guard._metrics.observe(self.method, code.name, seconds)
        log_rpc(
            service=self.guard._service,
            method=self.method,
            request_id=self.request_id,
            code=code.name,
            seconds=seconds,
            peer=self.context.peer(),
            detail=detail,
        )
        current_request_id.reset(self.token)
        if must_abort:
            await self.context.abort(code, detail)
        return False

    def _outcome(self, exc: BaseException | None) -> tuple[grpc.StatusCode, str, bool]:
        """(status, detail, whether the guard must abort with it) for how the handler ended."""
        if isinstance(exc, _Rejected):
            return exc.code, exc.detail, True
        if isinstance(exc, InvalidRequest):
            return exc.code, str(exc), True
        if exc is None or isinstance(exc, grpc.aio.AbortError):
            return _status(self.context.code()), self.context.details() or "", False
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            return grpc.StatusCode.CANCELLED, "", False
        log.error("unhandled error in %s (request id %s)", self.method, self.request_id, exc_info=exc)
        return grpc.StatusCode.INTERNAL, f"internal error (request id {self.request_id})", True


def _status(code: grpc.StatusCode | int | None) -> grpc.StatusCode:
    """The aio context reports its code as an enum, an int, or None (meaning OK so far)."""
    if code is None:
        return grpc.StatusCode.OK
    if isinstance(code, grpc.StatusCode):
        return code
    return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
