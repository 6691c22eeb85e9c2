"""What a failed call raises, and which gRPC status codes mean "try again later"."""

from __future__ import annotations

import grpc

__all__ = ["SidecarError", "SidecarUnavailable", "TRANSIENT", "error_from_rpc"]

# The sidecar could not answer now (unreachable, late, shutting down, overloaded): a later
# attempt may succeed, and a report is retried.
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)


class SidecarError(Exception):
    """The sidecar did not answer a call as asked.

    ``code`` is the gRPC status name (``"UNAUTHENTICATED"``, ``"INTERNAL"``…),
    ``details`` the server's message, ``method`` the RPC (``"Decide"``).
    """

    def __init__(self, method: str, code: str, details: str) -> None:
        super().__init__(f"{method}: {code}: {details}" if details else f"{method}: {code}")
        self.method = method
        self.code = code
        self.details = details


class SidecarUnavailable(SidecarError):
    """The sidecar could not be reached, or did not answer before the deadline."""


def error_from_rpc(method: str, error: grpc.RpcError) -> Exception:
    """The exception a failed call stands for.

    ``INVALID_ARGUMENT`` is a ``ValueError`` with the server's message, which names the
    field exactly as the in-process ``Engine`` does.
    """
    # both the synchronous errors and grpc.aio's AioRpcError have code() and details()
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValueError(details)
    if code in TRANSIENT:
        return SidecarUnavailable(method, code.name, details)
    return SidecarError(method, code.name, details)
