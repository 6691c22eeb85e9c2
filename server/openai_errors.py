"""Refusals in OpenAI's error shape, so that OpenAI SDKs raise their usual exceptions.

A denied decision becomes an HTTP status, a JSON body
``{"error": {"message", "type", "code", "param"}}`` and headers; every HTTP-facing
transport (Envoy's ext_authz, ext_proc and rate-limit services, the LiteLLM integration)
builds its refusals here, so a client sees the same answer whichever way it came:

===================  ======  =======================  =====================================
reason               status  type                     SDK exception (``openai`` for Python)
===================  ======  =======================  =====================================
DENIED_BY_RULE       403     ``permission_error``     ``PermissionDeniedError``
DEFAULT_DENY         403     ``permission_error``     ``PermissionDeniedError``
QUOTA_UNRESOLVED     403     ``permission_error``     ``PermissionDeniedError``
QUOTA_EXCEEDED       429     ``rate_limit_error``     ``RateLimitError``
STORE_UNAVAILABLE    503     ``server_error``         ``InternalServerError``
a bad request        400     ``invalid_request_error``  ``BadRequestError``
===================  ======  =======================  =====================================

``code`` is the reason in lower case (``quota_exceeded``), ``message`` the decision's
message. A 429 carries ``retry-after`` in whole seconds (rounded up, at least 1) and,
when that is more than a minute away, ``x-should-retry: false``, which tells OpenAI's
SDKs not to retry by themselves. Every refusal of a decision names it in
``x-tollway-decision-id``. Nothing here imports gRPC or an HTTP framework.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tollway.policy.model import Decision

__all__ = [
    "OpenAIError",
    "error_for_decision",
    "invalid_request",
    "retry_after_seconds",
    "DECISION_ID_HEADER",
    "SDK_RETRY_LIMIT",
]

DECISION_ID_HEADER = "x-tollway-decision-id"
# OpenAI's SDKs honour a retry-after of up to a minute; past it they back off on their own
SDK_RETRY_LIMIT = 60

_BY_REASON: dict[str, tuple[int, str]] = {
    "DENIED_BY_RULE": (403, "permission_error"),
    "DEFAULT_DENY": (403, "permission_error"),
    "QUOTA_UNRESOLVED": (403, "permission_error"),
    "QUOTA_EXCEEDED": (429, "rate_limit_error"),
    "STORE_UNAVAILABLE": (503, "server_error"),
}


@dataclass(frozen=True, slots=True)
class OpenAIError:
    """One refusal: ``status``, the body's fields, and extra response ``headers``."""

    status: int
    type: str
    code: str
    message: str
    param: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "code", "param"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
            }
        }

    def body_bytes(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=False, separators=(",", ":")).encode()


def retry_after_seconds(decision: Decision) -> int:
    """Whole seconds until the exceeded quotas admit again: the longest wait, rounded up."""
    waits = [q.retry_after for q in decision.quotas if q.exceeded]
    return max(1, math.ceil(max(waits, default=1.0)))


def error_for_decision(decision: Decision) -> OpenAIError:
    """The refusal for a denied decision; raises ``ValueError`` for an allowed one."""
    if decision.allowed:
        raise ValueError("decision: an allowed decision is not an error")
    status, kind = _BY_REASON.get(decision.reason, (403, "permission_error"))
    code = decision.reason.lower()
    message = decision.message or f"refused by tollway ({code})"
    headers: list[tuple[str, str]] = []
    if decision.decision_id:
        headers.append((DECISION_ID_HEADER, decision.decision_id))
    if status == 429:
        wait = retry_after_seconds(decision)
        headers.append(("retry-after", str(wait)))
        if wait > SDK_RETRY_LIMIT:
            headers.append(("x-should-retry", "false"))
    return OpenAIError(status, kind, code, message, None, tuple(headers))


def invalid_request(error: ValueError) -> OpenAIError:
    """A 400 for a request tollway cannot read: the message is the error's
    (``field: problem``), ``param`` its field when it names one (a ``FieldError``)."""
    param = getattr(error, "field", None)
    return OpenAIError(400, "invalid_request_error", "invalid_request", str(error), param)
