"""The LiteLLM proxy hook: ``Decide`` before each call, ``Report`` after it.

Before the call (``async_pre_call_hook``): the user and group by the configured sources,
the model, the attributes and an estimate (the request's ``max_tokens``) are decided; a
denial raises LiteLLM's ``ProxyException`` with tollway's status (403, 429, 503), message
and headers (``retry-after``), built by ``tollway.server.openai_errors`` as every HTTP
transport builds them; a route rewrites the call's model; the decision (its id, checks,
annotations, the user and group) rides in the call's metadata under ``tollway_decision``.

After the call: ``async_log_success_event`` reports the tokens, LiteLLM's own
``response_cost``, the duration and the status; LiteLLM logs a streamed call once, when
its last chunk is out, and the report's ``request_id`` is the proxy's call id, so even a
repeated event counts once. A failed call is reported by ``async_post_call_failure_hook``
(``status`` ``error`` or ``timeout``, nothing used), which releases its reservation.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import weakref
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyException

from tollway.client import TLS, AsyncClient
from tollway.integrations.policy import EmbeddedPolicy, Policy, SidecarPolicy
from tollway.policy.model import Decision
from tollway.server.openai_errors import OpenAIError, error_for_decision, invalid_request

from .identity import pick, request_identity
from .settings import SETTINGS_KEY, Settings

__all__ = ["TollwayHandler", "STATE_KEY"]

log = logging.getLogger("tollway.integrations.litellm")

STATE_KEY = "tollway_decision"  # in the call's metadata
_EXIT_FLUSH_SECONDS = 5.0


class TollwayHandler(CustomLogger):
    """Asks tollway before each proxied call and tells it what the call used.

    ``settings`` default to the proxy config's ``callback_settings.tollway``, read at the
    first call; ``policy`` to what the settings name (a sidecar client per event loop, or
    an in-process engine).
    """

    def __init__(self, settings: Settings | None = None, policy: Policy | None = None) -> None:
        super().__init__()
        self._settings = settings
        self._policy = policy
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Policy] = (
            weakref.WeakKeyDictionary()
        )

    # ------------------------------------------------------------ configuration

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from litellm.secret_managers.main import get_secret_str

            raw = (litellm.callback_settings or {}).get(SETTINGS_KEY)
            self._settings = Settings.parse(raw, resolve=lambda v: get_secret_str(v))
        return self._settings

    def policy(self) -> Policy:
        """What decides: the given policy, an in-process engine, or this loop's sidecar client.

        A client belongs to the event loop it first runs in; LiteLLM may log from another
        loop, which then gets a client of its own.
        """
        if self._policy is not None:
            return self._policy
        settings = self.settings
        if settings.rules is not None:
            from tollway.policy.engine import Engine

            engine = Engine.from_path(
                settings.rules, store=settings.store, key_prefix=settings.key_prefix
            )
            self._policy = EmbeddedPolicy(engine)
            return self._policy
        loop = asyncio.get_running_loop()
        policy = self._per_loop.get(loop)
        if policy is None:
            tls = TLS(ca=settings.tls) if isinstance(settings.tls, str) else settings.tls
            client = AsyncClient(
                settings.target, token=settings.token, tls=tls, timeout=settings.timeout,
                on_error=settings.on_error,
            )
            # the proxy has no shutdown hook for callbacks: deliver queued reports at exit
            atexit.register(client.close_reports, _EXIT_FLUSH_SECONDS)
            policy = self._per_loop[loop] = SidecarPolicy(client)
        return policy

    # ------------------------------------------------------------ before the call

    def decide_request(self, key: Any, data: Mapping[str, Any]) -> dict[str, Any]:
        """The ``DecideRequest`` for one proxied call; raises ``ValueError`` naming a bad field."""
        settings = self.settings
        found, path = request_identity(data, settings.attribute_headers)
        attributes = dict(found["attributes"])
        if settings.endpoint_attribute and path:
            attributes.setdefault(settings.endpoint_attribute, path)
        request: dict[str, Any] = {
            "request_id": str(data.get("litellm_call_id") or ""),
            "user": pick(settings.user, found["user"], key, request_metadata=settings.request_metadata),
            "group": pick(settings.group, found["group"], key, request_metadata=settings.request_metadata),
            "model": data["model"],
            "attributes": attributes,
        }
        limit = data.get("max_completion_tokens") or data.get("max_tokens")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            request["estimate"] = {"output_tokens": limit}
        return request

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        model = data.get("model")
        if not isinstance(model, str) or not model:
            return data  # not a model call (tollway decides model requests)
        try:
            request = self.decide_request(user_api_key_dict, data)
            decision = await self.policy().decide(request)
        except ValueError as exc:
            raise _refusal(invalid_request(exc)) from None
        if not decision.allowed:
            raise _refusal(error_for_decision(decision))
        _call_metadata(data)[STATE_KEY] = _state(request, decision)
        if decision.model and decision.model != model:
            data["model"] = decision.model
        return data

    # ------------------------------------------------------------ after the call

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        state = _logged_state(kwargs)
        if state is None:
            return
        await self._report(_success_report(state, kwargs, response_obj, start_time, end_time))

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> None:
        state = _call_metadata(request_data).get(STATE_KEY) if isinstance(request_data, dict) else None
        if not isinstance(state, Mapping):
            return None  # refused before tollway allowed it (or by tollway itself)
        await self._report(_report_of(state, status=_failure_status(original_exception)))
        return None

    async def _report(self, report: dict[str, Any]) -> None:
        try:
            await self.policy().report(report)
        except Exception:  # a report must never fail the proxy's logging
            log.exception("tollway report %s failed", report.get("request_id"))


# ------------------------------------------------------------------ helpers


def _refusal(error: OpenAIError) -> ProxyException:
    """LiteLLM's HTTP error for a refusal: its status, OpenAI body fields and headers."""
    return ProxyException(
        message=error.message,
        type=error.type,
        param=error.param,
        code=error.status,
        headers=dict(error.headers),
        openai_code=error.code,
    )


def _call_metadata(data: dict[str, Any]) -> dict[str, Any]:
    """The call's LiteLLM metadata (``litellm_metadata`` on the routes that use it)."""
    name = "litellm_metadata" if isinstance(data.get("litellm_metadata"), dict) else "metadata"
    metadata = data.get(name)
    if not isinstance(metadata, dict):
        metadata = data[name] = {}
    return metadata


def _state(request: Mapping[str, Any], decision: Decision) -> dict[str, Any]:
    """What the call carries from its decision to its report (plain JSON values)."""
    user, group = request.get("user"), request.get("group")
    return {
        "request_id": request["request_id"],
        "decision_id": decision.decision_id,
        "reason": decision.reason,
        "model": decision.model,
        "requested_model": request["model"],
        "routed": decision.routed,
        "checks": list(decision.checks),
        "annotations": dict(decision.annotations),
        "user": user["id"] if user else None,
        "group": group["id"] if group else None,
    }


def _logged_state(kwargs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    params = kwargs.get("litellm_params") or {}
    metadata = params.get("metadata") or params.get("litellm_metadata") or {}
    state = metadata.get(STATE_KEY) if isinstance(metadata, Mapping) else None
    return state if isinstance(state, Mapping) else None


def _report_of(state: Mapping[str, Any], **usage: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "request_id": state["request_id"],
        "decision_id": state.get("decision_id") or "",
        "model": state.get("model") or "",
        **usage,
    }
    if state.get("user"):
        report["user"] = state["user"]
    if state.get("group"):
        report["group"] = state["group"]
    return report


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0


def _success_report(
    state: Mapping[str, Any], kwargs: Mapping[str, Any], response: Any, start: Any, end: Any
) -> dict[str, Any]:
    logged = kwargs.get("standard_logging_object") or {}
    usage = getattr(response, "usage", None)
    input_tokens = _count(logged.get("prompt_tokens") or getattr(usage, "prompt_tokens", 0))
    output_tokens = _count(logged.get("completion_tokens") or getattr(usage, "completion_tokens", 0))
    details = getattr(usage, "prompt_tokens_details", None)
    cached = min(_count(getattr(details, "cached_tokens", 0)), input_tokens)
    cost = kwargs.get("response_cost")
    if not isinstance(cost, int | float) or isinstance(cost, bool) or not cost >= 0:
        cost = logged.get("response_cost") or 0.0
    duration = (end - start).total_seconds() if isinstance(start, datetime) and isinstance(end, datetime) else 0.0
    cache_hit = bool(logged.get("cache_hit"))
    report = _report_of(
        state,
        input_tokens=0 if cache_hit else input_tokens,
        output_tokens=0 if cache_hit else output_tokens,
        cached_input_tokens=0 if cache_hit else cached,
        cost_usd=float(cost),
        duration_seconds=max(0.0, duration),
        status="cached" if cache_hit else "success",
    )
    served = logged.get("model_group")
    if isinstance(served, str) and served:
        report["model"] = served  # what served, after any LiteLLM fallback
    return report


def _failure_status(exc: BaseException) -> str:
    timeouts = (asyncio.TimeoutError, TimeoutError, litellm.Timeout)
    return "timeout" if isinstance(exc, timeouts) else "error"
