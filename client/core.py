"""What ``Client`` and ``AsyncClient`` share: settings, failure policy, method wiring.

Each public method of both clients is one builder of ``calls`` turned into a method by
``sync_method`` or ``async_method``: the signature, the documentation and the
behaviour are written once, and the two clients only differ in how they wait.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc

from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

from .calls import Call
from .channel import DEFAULT_TARGET, ChannelSpec, TLSLike
from .failure import FailurePolicy, OnError
from .retry import ReportRetrier
from .stats import ClientStats, Counts

__all__ = ["ClientCore", "method_table", "sync_method", "async_method"]

P = ParamSpec("P")
R = TypeVar("R")

_TOLLWAY_RPCS = tuple(pb.DESCRIPTOR.services_by_name["Tollway"].methods_by_name)


def method_table(channel: Any) -> dict[str, Any]:
    """The callables of every RPC a client makes, by ``Call.method`` name."""
    stub = pb_grpc.TollwayStub(channel)
    table = {name: getattr(stub, name) for name in _TOLLWAY_RPCS}
    table["Health.Check"] = health_pb2_grpc.HealthStub(channel).Check
    return table


def _seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{name}: must be a positive number of seconds, got {value!r}")
    return float(value)


class ClientCore:
    """Settings and state common to both clients (see ``Client`` for the parameters)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: TLSLike = None,
        timeout: float = 0.05,
        on_error: OnError = "allow",
        admin_timeout: float = 5.0,
        report_queue: int = 10_000,
        report_max_age: float = 600.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._spec = ChannelSpec.build(target, token=token, tls=tls, options=options)
        self._metadata = self._spec.metadata or None
        self._timeouts = {
            "decide": _seconds(timeout, "timeout"),
            "report": _seconds(timeout, "timeout"),
            "admin": _seconds(admin_timeout, "admin_timeout"),
        }
        counts = Counts()
        retrier = ReportRetrier(
            self._send_later, counts, capacity=report_queue,
            max_age=_seconds(report_max_age, "report_max_age"),
        )
        self._policy = FailurePolicy(self._spec.target, on_error, retrier, counts)
        self._later_lock = threading.Lock()
        self._later: tuple[grpc.Channel, Any] | None = None
        self._open()

    def _open(self) -> None:
        """Open what the client needs before its first call (the subclass knows what)."""

    @property
    def target(self) -> str:
        return self._spec.target

    @property
    def on_error(self) -> OnError:
        return self._policy.on_error

    @property
    def stats(self) -> ClientStats:
        """Counts so far: decisions answered by ``on_error``, reports queued/delivered/dropped."""
        return self._policy.stats()

    def _timeout(self, call: Call[Any]) -> float:
        return call.timeout if call.timeout is not None else self._timeouts[call.kind]

    def _send_later(self, message: Any) -> None:
        """Deliver a queued report (the retry thread's only call), on a channel of its own:
        synchronous whichever client queued it, so retries need no event loop."""
        with self._later_lock:
            if self._later is None:
                channel = self._spec.channel()
                self._later = (channel, pb_grpc.TollwayStub(channel).Report)
            send = self._later[1]
        send(message, timeout=self._timeouts["admin"], metadata=self._metadata)

    def close_reports(self, timeout: float = 5.0) -> None:
        """Deliver the reports queued for a retry for up to ``timeout`` seconds, drop (and
        count) the rest, and stop retrying. Blocking, and callable from any thread: an
        ``atexit`` handler, or a shutdown hook outside the client's event loop."""
        self._policy.retrier.close(timeout)
        with self._later_lock:
            if self._later is not None:
                self._later[0].close()
                self._later = None


def _describe(method: Any, build: Callable[..., Any]) -> None:
    """Name, document and sign ``method`` as ``build`` is (what ``help()`` shows)."""
    method.__name__ = method.__qualname__ = build.__name__
    method.__doc__ = build.__doc__
    method.__signature__ = _signature_with_self(build)


def _signature_with_self(build: Callable[..., Any]) -> inspect.Signature:
    """``build``'s signature with ``self`` first, answering what its ``Call`` answers."""
    sig = inspect.signature(build)
    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    answer = str(sig.return_annotation)
    if answer.startswith("Call[") and answer.endswith("]"):
        answer = answer[len("Call[") : -1]
    return sig.replace(parameters=[this, *sig.parameters.values()], return_annotation=answer)


class _Runs(Protocol):
    def _run(self, call: Call[R]) -> R: ...


class _AwaitsRuns(Protocol):
    async def _run(self, call: Call[R]) -> R: ...


S = TypeVar("S", bound=_Runs)
A = TypeVar("A", bound=_AwaitsRuns)


def sync_method(build: Callable[P, Call[R]]) -> Callable[Concatenate[S, P], R]:
    """A blocking client method that runs the ``Call`` ``build`` makes."""

    def method(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._run(build(*args, **kwargs))

    _describe(method, build)
    return method


def async_method(build: Callable[P, Call[R]]) -> Callable[Concatenate[A, P], Coroutine[Any, Any, R]]:
    """A coroutine client method that runs the ``Call`` ``build`` makes."""

    async def method(self: A, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._run(build(*args, **kwargs))

    _describe(method, build)
    return method
