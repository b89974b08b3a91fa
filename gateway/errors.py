"""One table from domain errors to gRPC status codes, applied by one interceptor.

Clients see the domain error's message; anything unexpected becomes INTERNAL with a request
id, and the details go to the log under that id. The same interceptor records RPC metrics and
sheds load: past the gateway's limit, and past the caller's own share (fair share).
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

from gateway.auth import ANY_PLATFORM, Authorizer, sent_key
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
    text = str(exc).lower()
    # "Stub process ... is not healthy": Triton restarts the model's python backend stub (seen
    # when the machine is starved of CPU); a retry shortly succeeds, so not an INTERNAL of ours.
    if cls is not None or any(word in text for word in ("unavailable", "connect", "not healthy")):
        return Unavailable("the interest model (Triton) is unavailable; retry shortly")
    request_id = uuid.uuid4().hex[:12]
    log.error("Triton failed (request id %s): %s %s", request_id, status, exc.message())
    return InterestError(f"the interest model failed (request id {request_id})")


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
CallerLimit = Callable[[str], tuple[int, str]]  # caller -> (its limit, the setting that says so)
CallerRate = Callable[[str], "tuple[float, str] | None"]  # caller -> (calls/s, setting), None: no limit


class TokenBucket:
    """`rate` calls per second on average, at most `rate` * `burst_s` (at least 1) at once."""

    def __init__(self, rate: float, burst_s: float = 0.1) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * burst_s)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

SHARED = "shared"  # the one bucket of every call while auth is off
UNAUTHENTICATED = "unauthenticated"  # calls with a missing or unknown key (answered UNAUTHENTICATED)


class ShareExceeded(Overloaded):
    """A caller over its own share of the calls in flight (not the gateway over its limit)."""


def _refusal(caller: str, n: int, limit: int, setting: str) -> str:
    who = {ANY_PLATFORM: "operator keys have", UNAUTHENTICATED: "calls without a known API key have"}
    return (f"{who.get(caller, f'platform {caller} has')} {n} calls in flight, the limit "
            f"({setting} = {limit}); retry with backoff")


class ErrorAndMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors to status codes, records grpc_server_* metrics per RPC, and sheds
    load at once, before any work, instead of queueing behind the model: past `max_in_flight`
    concurrent RPCs of the service, and past the caller's own share (`caller_limit`; the caller
    is the platform of its API key, '*' for operator keys), so that one platform flooding the
    gateway is refused alone while the others are served.

    With auth off every call is in one shared bucket under `max_in_flight` only: the platform
    in a request is then only the caller's claim, and splitting by it would let any caller
    spend another platform's share."""

    def __init__(self, metrics: GatewayMetrics, max_in_flight: int = 256,
                 service_prefix: str = "/interest.v1.", authorizer: Authorizer | None = None,
                 caller_limit: CallerLimit | None = None, share_pushback_s: float = 0.0,
                 caller_rate: CallerRate | None = None) -> None:
        self._metrics = metrics
        self._caller_rate = caller_rate or (lambda caller: None)
        self._buckets: dict[str, tuple[TokenBucket, str] | None] = {}
        self._pushback_s = share_pushback_s
        self._max_in_flight = max_in_flight
        self._prefix = service_prefix
        self._auth = authorizer
        self._caller_limit = caller_limit or (lambda caller: (max_in_flight, "max_in_flight"))
        self._limits: dict[str, tuple[int, str]] = {}
        self.in_flight = 0
        self.caller_in_flight: dict[str, int] = {}
        self._refusal_logged = -1e9
        self._refused_since_log = 0
        metrics.in_flight.set_function(lambda: self.in_flight)  # read at each scrape
        metrics.in_flight_limit.set(max_in_flight)

    def _caller(self, context: grpc.aio.ServicerContext) -> str:
        """Whose share a call counts against (resolved again, the same way, by the servicer)."""
        if self._auth is None or not self._auth.enabled:
            return SHARED
        return self._auth.platform_of(sent_key(context.invocation_metadata())) or UNAUTHENTICATED

    def limit_of(self, caller: str) -> tuple[int, str]:
        """The caller's share and its setting (settings are frozen: looked up once per caller)."""
        if caller not in self._limits:
            self._limits[caller] = (self._max_in_flight, "max_in_flight") if caller == SHARED \
                else self._caller_limit(caller)
            self._metrics.caller_in_flight_limit.labels(platform=caller).set(self._limits[caller][0])
            for limit in ("platform", "rate", "gateway"):  # zero series: the panels and alerts read rates
                self._metrics.refused.labels(platform=caller, limit=limit)
        return self._limits[caller]

    def _admit(self, caller: str) -> None:
        """Count the call in, or raise Overloaded (counted under the limit that refused it)."""
        mine = self.caller_in_flight.get(caller, 0)
        limit, setting = self.limit_of(caller)
        if caller != SHARED and mine >= limit:
            self._metrics.refused.labels(platform=caller, limit="platform").inc()
            raise ShareExceeded(_refusal(caller, mine, limit, setting))
        if caller not in self._buckets:  # settings are frozen: one bucket per caller, made once
            rate = self._caller_rate(caller)
            self._buckets[caller] = (TokenBucket(rate[0]), rate[1]) if rate is not None else None
        bucket = self._buckets[caller]
        if bucket is not None and not bucket[0].take():
            self._metrics.refused.labels(platform=caller, limit="rate").inc()
            raise ShareExceeded(f"platform {caller} is over its rate of {bucket[0].rate:g} calls/s "
                                f"({bucket[1]}); retry with backoff")
        if self.in_flight >= self._max_in_flight:
            self._metrics.refused.labels(platform=caller, limit="gateway").inc()
            raise Overloaded(f"gateway overloaded: {self.in_flight} requests in flight (limit "
                             f"{self._max_in_flight}); retry with backoff")
        self.in_flight += 1
        self.caller_in_flight[caller] = mine + 1
        self._metrics.caller_in_flight.labels(platform=caller).set(mine + 1)

    def _log_refusal(self, exc: InterestError, every_s: float = 10.0) -> None:
        """Log a refusal, at most one line per `every_s` seconds (all are counted in metrics)."""
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._refusal_logged >= every_s:
            log.warning("refused %d call(s) with RESOURCE_EXHAUSTED since the last such line; the "
                        "latest: %s", self._refused_since_log, exc)
            self._refusal_logged, self._refused_since_log = now, 0

    def _release(self, caller: str) -> None:
        self.in_flight -= 1
        left = self.caller_in_flight[caller] - 1
        self.caller_in_flight[caller] = left
        self._metrics.caller_in_flight.labels(platform=caller).set(left)

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
            caller: str | None = None
            try:
                if admitted:
                    # No await between admission and the servicer's own key check: a key set
                    # swapped in by a reload is seen by both or by neither.
                    who = self._caller(context)
                    self._admit(who)
                    caller = who
                return await inner(request, context)
            except InterestError as exc:
                code = status_of(exc)
                if admitted and caller is None:  # refused at admission: a flood would flood the log
                    self._log_refusal(exc)
                    if isinstance(exc, ShareExceeded) and self._pushback_s:
                        await asyncio.sleep(self._pushback_s)  # slows a retry storm, costs no CPU
                else:
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
                if caller is not None:
                    self._release(caller)
                metrics.handled.labels(**labels, grpc_code=code.name).inc()
                metrics.handling.labels(**labels).observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
