"""tollway: a policy decision sidecar for LLM gateways.

The in-process API: ``Engine`` decides, reports and explains; ``RulesError``
carries the diagnostics of a ruleset that does not compile.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tollway.dsl.diagnostics import Diagnostic, RulesError
    from tollway.policy.engine import Engine
    from tollway.policy.model import Decision, Explanation, QuotaStatus, ReportAck

__all__ = [
    "Engine", "RulesError", "Diagnostic", "Decision", "QuotaStatus", "ReportAck", "Explanation",
]
__version__ = "0.1.0"

# Loaded on first use so that ``import tollway.dsl`` (the CLI's check/fmt) does not pay
# for the engine, Redis and gRPC imports.
_HOMES = {
    "Engine": "tollway.policy.engine",
    "RulesError": "tollway.dsl.diagnostics",
    "Diagnostic": "tollway.dsl.diagnostics",
    "Decision": "tollway.policy.model",
    "QuotaStatus": "tollway.policy.model",
    "ReportAck": "tollway.policy.model",
    "Explanation": "tollway.policy.model",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tollway' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
