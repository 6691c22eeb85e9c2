"""A client of the tollway sidecar, blocking (``Client``) or asyncio (``AsyncClient``).

Both answer with the dataclasses of the in-process ``Engine`` (``Decision``,
``ReportAck``, ``Explanation``, ``EntityView``, ``UsageDetail``, ``UsagePage``), put a
deadline on every call, answer ``decide`` by ``on_error`` when the sidecar fails, and
retry reports in the background. See docs/client.md.
"""

from __future__ import annotations

from .aio import AsyncClient
from .channel import TLS
from .errors import SidecarError, SidecarUnavailable
from .stats import ClientStats
from .sync import Client

__all__ = ["Client", "AsyncClient", "TLS", "ClientStats", "SidecarError", "SidecarUnavailable"]
