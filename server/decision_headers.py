"""The headers that carry an allowed decision to the upstream (and what a client may not forge).

==================================  ===========================================================
``x-tollway-decision-id``           the decision's id (a later report settles it)
``x-tollway-model``                 the model that serves: the route target or the requested one
``x-tollway-checks``                the checks to run, comma-separated (absent when none)
``x-tollway-annotation-<key>``      one per annotation; the key in lower case, characters
                                    a header name cannot hold replaced by ``-``
==================================  ===========================================================

A client could send these headers itself; transports drop every incoming header that
``is_decision_header`` names before adding the decision's own, so the upstream only ever
sees what tollway decided.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .openai_errors import DECISION_ID_HEADER

if TYPE_CHECKING:
    from tollway.policy.model import Decision

__all__ = [
    "decision_headers",
    "is_decision_header",
    "forged_headers",
    "header_name",
    "header_value",
    "DECISION_ID_HEADER",
    "MODEL_HEADER",
    "CHECKS_HEADER",
    "ANNOTATION_PREFIX",
]

MODEL_HEADER = "x-tollway-model"
CHECKS_HEADER = "x-tollway-checks"
ANNOTATION_PREFIX = "x-tollway-annotation-"
_EXACT = frozenset({DECISION_ID_HEADER, MODEL_HEADER, CHECKS_HEADER})
# header-name characters (RFC 9110 tchar), lower case as HTTP/2 and Envoy carry them
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def header_name(text: str) -> str:
    """``text`` in lower case with every character a header name cannot hold made ``-``."""
    return "".join(c if c in _TCHAR else "-" for c in text.lower())


def header_value(text: str) -> str:
    """``text`` without the control characters a header value cannot hold (CR, LF, NUL…)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else " " for c in text)


def decision_headers(decision: Decision) -> list[tuple[str, str]]:
    """``(name, value)`` pairs for an allowed decision, in the order of the table above."""
    out = [(DECISION_ID_HEADER, decision.decision_id), (MODEL_HEADER, header_value(decision.model))]
    if decision.checks:
        out.append((CHECKS_HEADER, header_value(",".join(decision.checks))))
    for key, value in decision.annotations.items():
        out.append((ANNOTATION_PREFIX + header_name(key), header_value(value)))
    return out


def is_decision_header(name: str) -> bool:
    """Whether ``name`` (lower case) is one of the headers above, which only tollway sets."""
    return name in _EXACT or name.startswith(ANNOTATION_PREFIX)


def forged_headers(incoming: Iterable[str], setting: Iterable[tuple[str, str]]) -> list[str]:
    """Names in ``incoming`` (lower case) that only tollway may set and that ``setting`` (the
    decision's headers) does not overwrite: the ones to remove from the request."""
    ours = {name for name, _ in setting}
    return [name for name in incoming if is_decision_header(name) and name not in ours]
