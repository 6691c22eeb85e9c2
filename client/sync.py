"""``Client``: the blocking client, for threaded gateways and scripts."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

import grpc

from . import calls
from .calls import Call
from .core import ClientCore, method_table, sync_method

__all__ = ["Client"]

R = TypeVar("R")


class Client(ClientCore):
    """A blocking client of a tollway sidecar; safe to share between threads.

    ``Client(target, *, token=None, tls=None, timeout=0.05, on_error="allow")``:

    - ``target``: ``HOST:PORT``, ``unix:/path/to.sock`` (or the bare path);
    - ``token``: sent as ``authorization: Bearer <token>`` on every call;
    - ``tls``: ``True`` (system roots), a CA file path, a ``TLS`` (CA, client certificate
      and key for mutual TLS, server name) or ``grpc.ChannelCredentials``; None: plaintext;
    - ``timeout``: the deadline of ``decide`` and ``report``, in seconds;
    - ``on_error``: what ``decide`` answers when the sidecar is unreachable, fails or
      misses the deadline: ``"allow"``, ``"deny"`` (reason ``STORE_UNAVAILABLE``,
      counted) or ``"raise"`` (``SidecarUnavailable``/``SidecarError``);
    - ``admin_timeout``: the deadline of the other calls, and of background report retries;
    - ``report_queue``, ``report_max_age``: how many reports wait for a retry at most, and
      for how long, before they are dropped (counted);
    - ``options``: extra gRPC channel arguments.

    Methods return the dataclasses of the in-process ``Engine``: ``decide`` and
    ``report`` take the same mappings ``Engine.decide`` and ``Engine.report`` do (or
    keyword fields), so code moves between the two by changing the line that makes it.
    """

    def _open(self) -> None:
        self._channel = self._spec.channel()
        self._methods = method_table(self._channel)

    def _run(self, call: Call[R]) -> R:
        try:
            reply = self._methods[call.method](
                call.request,
                timeout=self._timeout(call),
                metadata=self._metadata,
                wait_for_ready=call.wait_for_ready,
            )
        except grpc.RpcError as exc:
            return self._policy.failed(call, exc)
        return call.answer(reply)

    decide = sync_method(calls.decide)
    report = sync_method(calls.report)
    explain = sync_method(calls.explain)
    upsert_entity = sync_method(calls.upsert_entity)
    get_entity = sync_method(calls.get_entity)
    get_usage = sync_method(calls.get_usage)
    list_usage = sync_method(calls.list_usage)
    ready = sync_method(calls.ready)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the reports queued for retry are delivered (or dropped); False on timeout."""
        return self._policy.retrier.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver queued reports for up to ``timeout`` seconds, then close the channels."""
        self.close_reports(timeout)
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
