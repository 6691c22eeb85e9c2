"""The ``tollway.v1.Tollway`` servicer: translate, delegate to the one ``Engine``, translate back.

No business logic lives here. Errors become status codes in one place (``rpc``):
``ValueError`` -> INVALID_ARGUMENT with the model's message (it names the field),
an unknown entity -> NOT_FOUND, an unreachable store -> UNAVAILABLE (whose message and
``tollway-outcome`` trailer say whether the call may have been applied), an unreachable
usage database -> UNAVAILABLE, an engine that keeps no usage -> UNIMPLEMENTED, anything
else -> INTERNAL with a generic message and the traceback in the log.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc

from tollway.policy.engine import STORE_UNREACHABLE, Engine
from tollway.policy.stores.base import StoreUnavailable
from tollway.policy.usage import UsageUnavailable
from tollway.policy.validate import need_kind
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

from . import convert, usage_convert
from .engine_calls import EngineCalls
from .offload import Offload

__all__ = ["TollwayService", "NotFound", "SERVICE_NAME", "OUTCOME_KEY", "rpc"]

log = logging.getLogger("tollway.server")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Tollway"].full_name

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")


class NotFound(LookupError):
    """The named entity or usage record does not exist."""


# The trailer an UNAVAILABLE answer carries: "not-applied" (nothing changed: retry at
# will) or "unknown" (it may have been applied: retry a Report with the same request_id,
# which counts once).
OUTCOME_KEY = "tollway-outcome"
_UNAVAILABLE = {
    "not_applied": f"{STORE_UNREACHABLE}; nothing was applied: retry",
    "unknown": (
        "counter store did not answer in time; the call may have been applied: retry a "
        "Report with the same request_id (it counts once)"
    ),
}


def rpc(
    method: Callable[Concatenate[S, Any, grpc.aio.ServicerContext, P], Awaitable[R]],
) -> Callable[Concatenate[S, Any, grpc.aio.ServicerContext, P], Awaitable[R]]:
    """Map exceptions to status codes: the only try/except of every servicer of the port.

    The servicer holds its ``EngineCalls`` as ``calls``; each call is noted there first.
    """

    @functools.wraps(method)
    async def wrapper(
        self: S, request: Any, context: grpc.aio.ServicerContext, *args: P.args, **kw: P.kwargs
    ) -> R:
        self.calls.touch()  # type: ignore[attr-defined]
        try:
            return await method(self, request, context, *args, **kw)
        except grpc.aio.AbortError:
            raise
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except StoreUnavailable as exc:
            # per call at debug: an outage is told once by health, and counted in metrics
            log.debug("%s: %s: %s", method.__name__, STORE_UNREACHABLE, exc)
            context.set_trailing_metadata(((OUTCOME_KEY, exc.outcome.replace("_", "-")),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, _UNAVAILABLE[exc.outcome])
        except UsageUnavailable as exc:
            log.debug("%s: %s", method.__name__, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "usage database unavailable")
        except NotImplementedError:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "usage is not kept by this server")
        except Exception:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


class TollwayService(pb_grpc.TollwayServicer):
    """The gRPC face of an ``Engine``; its ``calls`` run the engine for every service.

    Usage queries read a database: they run in a pool of their own (``queries``), so a
    slow listing never holds a decision up.
    """

    def __init__(self, engine: Engine, *, max_workers: int = 32, query_workers: int = 8) -> None:
        self._engine = engine
        self.calls = EngineCalls(engine, max_workers=max_workers)
        self.queries = Offload(threads=query_workers, name="tollway-usage")

    @property
    def last_call(self) -> float:
        """Monotonic time the latest call of any service started (the drain watches it)."""
        return self.calls.last_call

    def close(self) -> None:
        self.calls.close()
        self.queries.close()

    # ------------------------------------------------------------------ RPCs

    @rpc
    async def Decide(
        self, request: pb.DecideRequest, context: grpc.aio.ServicerContext
    ) -> pb.Decision:
        decision = await self.calls(self._engine.decide, convert.decide_request(request))
        return convert.decision_to_proto(decision)

    @rpc
    async def Report(
        self, request: pb.UsageReport, context: grpc.aio.ServicerContext
    ) -> pb.ReportAck:
        ack = await self.calls(self._engine.report, convert.usage_report(request))
        return convert.ack_to_proto(ack)

    @rpc
    async def Explain(
        self, request: pb.DecideRequest, context: grpc.aio.ServicerContext
    ) -> pb.Explanation:
        explanation = await self.calls(self._engine.explain, convert.decide_request(request))
        return convert.explanation_to_proto(explanation)

    @rpc
    async def UpsertEntity(
        self, request: pb.UpsertEntityRequest, context: grpc.aio.ServicerContext
    ) -> pb.EntityInfo:
        metadata = (
            convert.struct_to_dict(request.metadata) if request.HasField("metadata") else None
        )
        view = await self.calls(
            self._engine.upsert_entity,
            request.kind,
            request.id,
            metadata,
            groups=tuple(request.groups),
            replace=request.replace,
        )
        return convert.entity_to_proto(view)

    @rpc
    async def GetEntity(
        self, request: pb.GetEntityRequest, context: grpc.aio.ServicerContext
    ) -> pb.EntityInfo:
        view = await self.calls(self._engine.get_entity, request.kind, request.id)
        if view is None:
            raise NotFound(f"no {request.kind} with id {request.id!r}")
        return convert.entity_to_proto(view)

    @rpc
    async def GetUsage(
        self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.UsageDetail:
        kind, ident = usage_convert.subject(request)
        detail = await self.queries(self._engine.get_usage, kind, ident)
        if detail is None:
            raise NotFound(f"no usage recorded for {kind} {ident!r}")
        return usage_convert.detail_to_proto(detail)

    @rpc
    async def ListUsage(
        self, request: pb.ListUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListUsageResponse:
        query = usage_convert.list_request(request)  # names a bad parameter in its ValueError
        page = await self.queries(self._engine.list_usage, query)
        return usage_convert.page_to_proto(page)

    @rpc
    async def GetUsageSeries(
        self, request: pb.UsageSeriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.UsageSeries:
        kind, ident = usage_convert.subject(request)
        query = usage_convert.series_request(request)
        series = await self.queries(self._engine.usage_series, kind, ident, query)
        if series is None:
            raise NotFound(f"no usage recorded for {kind} {ident!r}")
        return usage_convert.series_to_proto(series)

    @rpc
    async def ListSpikes(
        self, request: pb.ListSpikesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSpikesResponse:
        query = usage_convert.spikes_request(request)
        spikes = await self.queries(self._engine.list_spikes, query)
        return usage_convert.spikes_to_proto(spikes)

    @rpc
    async def Credit(
        self, request: pb.CreditRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreditAck:
        applied, view = await self.queries(
            self._engine.credit, request.kind, request.id, request.balance, request.amount,
            reason=request.reason, idempotency_key=request.idempotency_key,
        )
        return pb.CreditAck(applied=applied, balance=convert.balance_to_proto(view))

    @rpc
    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.BalanceInfo:
        views = await self.queries(self._engine.get_balance, request.kind, request.id)
        out = pb.BalanceInfo(kind=need_kind(request.kind), id=request.id)
        for view in views:
            convert.balance_to_proto(view, out.balances.add())
        return out
