"""gRPC health in step with readiness: NOT_SERVING while the counter store is unreachable.

``HealthServicer`` is the library's asyncio servicer with ``List`` answered (the library
leaves it unimplemented: a client calling it got UNKNOWN and an ERROR line in the log).

``/readyz`` asks the store on each request; gRPC clients and load balancers ask
``grpc.health.v1.Health``. ``HealthWatch`` checks readiness every ``interval`` seconds
(off the event loop: a stalled Redis answers a ping only at its timeout), and at once
whenever any check (a ``/readyz`` request included) saw the answer change, and sets the
health of every registered service to match. A change is logged once: a warning when the
store stops answering, an info line when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health, health_pb2

from .http_ops import Readiness, consequence

__all__ = ["HealthServicer", "HealthWatch", "DEFAULT_INTERVAL"]

log = logging.getLogger("tollway.server")

DEFAULT_INTERVAL = 1.0


class HealthServicer(health.aio.HealthServicer):
    """``grpc.health.v1.Health`` with ``Check``, ``Watch`` and ``List``."""

    def __init__(self) -> None:
        super().__init__()
        self._names: dict[str, None] = {"": None}  # every service a status was set for

    async def set(
        self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus
    ) -> None:
        self._names.setdefault(service)
        await super().set(service, status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        out = health_pb2.HealthListResponse()
        for name in self._names:
            check = health_pb2.HealthCheckRequest(service=name)
            out.statuses[name].CopyFrom(await self.Check(check, context))
        return out


class HealthWatch:
    """Keeps ``servicer``'s status for ``services`` equal to ``readiness``."""

    def __init__(
        self,
        readiness: Readiness,
        servicer: health.aio.HealthServicer,
        services: tuple[str, ...],
        *,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self._readiness = readiness
        self._servicer = servicer
        self._services = services
        self._interval = interval
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self._serving: bool | None = None
        readiness.watch(self._on_change)

    async def start(self) -> tuple[bool, str]:
        """Check once, set health, then keep checking; returns the first answer."""
        ok, reason = await self._check()
        self._task = asyncio.create_task(self._run(), name="tollway-health-watch")
        return ok, reason

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ------------------------------------------------------------------ internals

    def _on_change(self, ok: bool, reason: str) -> None:
        """Called by any readiness check, from any thread."""
        self._loop.call_soon_threadsafe(self._changed.set)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._interval)
            self._changed.clear()
            await self._check()

    async def _check(self) -> tuple[bool, str]:
        ok, reason = await asyncio.to_thread(self._readiness.check)
        if ok != self._serving:
            if self._serving is not None:  # the first answer is logged by the caller
                if ok:
                    log.info("ready again: %s", reason)
                else:
                    log.warning("not ready: %s; %s", reason, consequence(reason))
            self._serving = ok
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._services:
            await self._servicer.set(name, status)
        return ok, reason
