"""One table from domain errors to gRPC status codes, applied by one interceptor.

Clients see the domain error's message; anything unexpected becomes INTERNAL with a request
id, and the details go to the log under that id. The same interceptor records RPC metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from tritonclient.utils import InferenceServerException

from gateway.metrics import GatewayMetrics
from interest_core.errors import (
    DeadlineExceeded,
    InterestError,
    InvalidInput,
    NotFound,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger("interest.gateway")

STATUS: dict[type[InterestError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}

_TRITON: dict[str, type[InterestError]] = {
    "StatusCode.UNAVAILABLE": Unavailable,
    "StatusCode.DEADLINE_EXCEEDED": DeadlineExceeded,
    "StatusCode.RESOURCE_EXHAUSTED": Overloaded,
    "StatusCode.INVALID_ARGUMENT": InvalidInput,
    "StatusCode.NOT_FOUND": Unavailable,  # the model is not loaded: a server-side problem
    "StatusCode.UNIMPLEMENTED": Unavailable,
}


def status_of(exc: InterestError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def from_triton(exc: InferenceServerException) -> InterestError:
    """Translate a tritonclient error into a domain error with a client-safe message."""
    status = str(exc.status() or "")
    cls = _TRITON.get(status)
    if cls is DeadlineExceeded:
        return DeadlineExceeded("deadline exceeded while waiting for the interest model")
    if cls is InvalidInput:
        return InvalidInput(f"the interest model rejected the input: {exc.message()}")
    if cls is Overloaded:
        return Overloaded("the interest model is overloaded; retry with backoff")
    if cls is not None or "unavailable" in str(exc).lower() or "connect" in str(exc).lower():
        return Unavailable("the interest model (Triton) is unavailable; retry shortly")
    request_id = uuid.uuid4().hex[:12]
    log.error("Triton failed (request id %s): %s %s", request_id, status, exc.message())
    return InterestError(f"the interest model failed (request id {request_id})")


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class ErrorAndMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors to status codes, records grpc_server_* metrics per RPC, and sheds
    load: past `max_in_flight` concurrent RPCs of the service, new ones get
    RESOURCE_EXHAUSTED at once instead of queueing behind the model."""

    def __init__(self, metrics: GatewayMetrics, max_in_flight: int = 256,
                 service_prefix: str = "/interest.v1.") -> None:
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._prefix = service_prefix
        self.in_flight = 0
        metrics.in_flight.set_function(lambda: self.in_flight)  # read at each scrape
        metrics.in_flight_limit.set(max_in_flight)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        service, _, method = details.method.lstrip("/").rpartition("/")
        inner: Handler = handler.unary_unary  # type: ignore[assignment]
        metrics = self._metrics
        admitted = details.method.startswith(self._prefix)

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            labels = {"grpc_type": "unary", "grpc_service": service, "grpc_method": method}
            metrics.started.labels(**labels).inc()
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            counted = False
            try:
                if admitted:
                    if self.in_flight >= self._max_in_flight:
                        raise Overloaded(
                            f"gateway overloaded: {self.in_flight} requests in flight (limit "
                            f"{self._max_in_flight}); retry with backoff"
                        )
                    self.in_flight += 1
                    counted = True
                return await inner(request, context)
            except InterestError as exc:
                code = status_of(exc)
                log.info("%s -> %s: %s", method, code.name, exc)
                await context.abort(code, str(exc) or code.name)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[assignment]
                raise
            except asyncio.CancelledError:
                # gRPC cancelled the handler: the client's deadline passed, or the client went
                # away. Counted as what the client saw, never as OK.
                remaining = context.time_remaining()
                code = (grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0
                        else grpc.StatusCode.CANCELLED)
                log.info("%s -> %s: cancelled by gRPC after %.3f s", method, code.name,
                         time.perf_counter() - start)
                raise
            except Exception:
                request_id = uuid.uuid4().hex[:12]
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed unexpectedly (request id %s)", method, request_id)
                await context.abort(code, f"internal error (request id {request_id})")
            finally:
                if counted:
                    self.in_flight -= 1
                metrics.handled.labels(**labels, grpc_code=code.name).inc()
                metrics.handling.labels(**labels).observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
