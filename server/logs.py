"""The server's log lines: text for people, or one JSON object per line for log shippers.

Only tollway's own loggers (``tollway.*``) follow ``--log-level``; libraries (gRPC,
asyncio, redis) speak at WARNING and above whatever the level, so ``--log-level debug``
shows tollway's debugging lines and not a library's internals.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["configure"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}

# attributes every LogRecord has; anything else on a record came from ``extra=``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName",
}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", …extra fields, "exception"?}`` on one line.

    ``time`` is ISO 8601 UTC with microseconds; fields passed with ``extra=`` are added
    as they are (values JSON cannot hold are written with ``str``).
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str, fmt: str, stream: TextIO) -> None:
    """Send every log record to ``stream`` in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    own = LEVELS[level]
    root.setLevel(max(own, logging.WARNING))
    logging.getLogger("tollway").setLevel(own)
