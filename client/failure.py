"""What a client answers when the sidecar fails: one place for every call.

A bad request (``INVALID_ARGUMENT``) is the caller's ``ValueError``. Otherwise the call's
``recover`` decides: ``decide`` answers by ``on_error`` (a gateway must not fail, or
hang, because its policy sidecar did), ``report`` queues the report for a later
attempt, lookups answer None for ``NOT_FOUND``; anything else raises ``SidecarError``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal, TypeVar

import grpc

from tollway.policy.model import Decision, ReportAck

from .calls import Call
from .errors import SidecarError, SidecarUnavailable, error_from_rpc
from .retry import ReportRetrier
from .stats import ClientStats, Counts

__all__ = ["OnError", "FailurePolicy"]

log = logging.getLogger("tollway.client")

R = TypeVar("R")
OnError = Literal["allow", "deny", "raise"]
ON_ERROR: tuple[OnError, ...] = ("allow", "deny", "raise")

# a sidecar that is down fails every call: say so once in a while, not every time
_LOG_EVERY = 10.0


class FailurePolicy:
    """A client's answers to failed calls, its counts and its report retry queue."""

    def __init__(
        self,
        target: str,
        on_error: OnError,
        retrier: ReportRetrier,
        counts: Counts,
        *,
        clock: Any = time.monotonic,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error: must be 'allow', 'deny' or 'raise', got {on_error!r}")
        self.target = target
        self.on_error: OnError = on_error
        self.retrier = retrier
        self.counts = counts
        self._clock = clock
        self._logged: dict[str, float] = {}

    def failed(self, call: Call[R], exc: grpc.RpcError) -> R:
        """The answer to ``call`` when it failed with ``exc``, or the exception to raise."""
        error = error_from_rpc(call.method, exc)
        error.__cause__ = exc
        if isinstance(error, SidecarError) and call.recover is not None:
            return call.recover(error, self)
        raise error

    def decision(self, error: SidecarError, model: str) -> Decision:
        """The ``on_error`` answer to a ``Decide`` the sidecar did not answer."""
        if self.on_error == "raise":
            raise error
        allowed = self.on_error == "allow"
        self.counts.fallback(error.code, allowed)
        self._warn(
            error.code,
            "tollway at %s failed (%s); decisions answered by on_error=%s",
            self.target, error, self.on_error,
        )
        verdict = "allowed" if allowed else "denied"
        return Decision(
            allowed=allowed,
            reason="STORE_UNAVAILABLE",
            message=f"policy service unavailable ({error.code}); request {verdict} by on_error",
            model=model,
        )

    def report_failed(self, error: SidecarError, message: Any) -> ReportAck:
        """Queue a report the sidecar could not take now; other failures raise."""
        if not isinstance(error, SidecarUnavailable):
            raise error
        queued = self.retrier.submit(message)
        self._warn(
            "report:" + error.code,
            "tollway at %s did not take a report (%s); retrying in the background",
            self.target, error,
        )
        return ReportAck(request_id=message.request_id, outcome="queued" if queued else "dropped")

    def stats(self) -> ClientStats:
        return self.counts.snapshot(self.retrier.pending)

    def _warn(self, key: str, text: str, *args: Any) -> None:
        now = self._clock()
        if now - self._logged.get(key, -_LOG_EVERY) >= _LOG_EVERY:
            self._logged[key] = now
            log.warning(text, *args)
