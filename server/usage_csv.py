"""Usage as CSV rows, one encoding for the HTTP activity export and ``tollway usage --csv``.

Cells are values for ``csv_export.CsvEncoder`` (which makes text spreadsheet-safe):
numbers stay numbers, times are ISO 8601 text, nested values (a report's
``attributes``, a record's ``models``) are JSON text.
"""

from __future__ import annotations

import json

from tollway.policy.usage import UsageEvent, UsageRecord

from .csv_export import Cell

__all__ = ["ACTIVITY_COLUMNS", "RECORD_COLUMNS", "activity_row", "record_row"]

ACTIVITY_COLUMNS: tuple[str, ...] = (
    "time", "kind", "request_id", "decision_id", "user_id", "group_id", "model",
    "input_tokens", "output_tokens", "total_tokens", "cost_usd", "duration_seconds",
    "status", "counts_request", "attributes",
)
RECORD_COLUMNS: tuple[str, ...] = (
    "id", "request_count", "first_seen", "last_seen", "total_tokens", "input_tokens",
    "output_tokens", "total_cost", "total_duration", "models",
)


def activity_row(event: UsageEvent) -> list[Cell]:
    """One report, in ``ACTIVITY_COLUMNS`` order."""
    data = event.to_dict()
    data["attributes"] = json.dumps(data["attributes"], ensure_ascii=False, sort_keys=True)
    return [data[c] for c in ACTIVITY_COLUMNS]


def record_row(record: UsageRecord) -> list[Cell]:
    """One user's or group's aggregates, in ``RECORD_COLUMNS`` order."""
    data = record.to_dict()
    data["id"] = record.id
    data["models"] = json.dumps(data["models"], ensure_ascii=False)
    return [data[c] for c in RECORD_COLUMNS]
