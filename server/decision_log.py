"""Decision logs for audit: one JSON line per ``Decide``, written off the hot path.

``--decision-log PATH|-`` (docs/security.md). A decision only appends a small tuple to a
bounded in-memory buffer; a writer thread turns the buffer into JSON lines and writes
them. When the buffer is full (the disk stalls, stdout is not read) the line is dropped
and counted in ``tollway_decision_log_dropped_total``: a decision never waits for its
log. A file rotates when the next line would take it over ``--decision-log-max-mb``:
``PATH`` becomes ``PATH.1``, ``PATH.1`` becomes ``PATH.2``, … and only
``--decision-log-keep`` rotated files are kept.

Metadata is personal data: no metadata value is logged unless its key is named in
``--decision-log-metadata``; ids, models, rules and quotas are.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

from tollway.dsl.compiled import EvalContext
from tollway.policy.model import DecideRequest, Decision
from tollway.policy.observer import NullObserver

__all__ = ["DecisionLog", "Sink", "FileSink", "StreamSink", "open_sink", "decision_record"]

log = logging.getLogger("tollway.server.decision_log")

DEFAULT_BUFFER = 10_000  # lines waiting for the writer before new ones are dropped
_IDLE = 0.02  # seconds the writer sleeps when the buffer is empty


class Sink(Protocol):
    def write(self, lines: list[str]) -> None:
        """Write whole lines (each ends with a newline); raises ``OSError`` on failure."""
        ...

    def close(self) -> None: ...


class StreamSink:
    """Lines to an open stream (``-``: stdout); never rotated.

    One ``write(2)`` per line: on a pipe a line up to ``PIPE_BUF`` (4 KiB) lands whole,
    whichever other process (another worker) writes to the same pipe.
    """

    def __init__(self, stream: TextIO) -> None:
        stream.flush()
        self._fd = stream.fileno()

    def write(self, lines: list[str]) -> None:
        for line in lines:
            data = memoryview(line.encode("utf-8"))
            while data:
                data = data[os.write(self._fd, data):]

    def close(self) -> None:
        pass  # the stream is not ours


class FileSink:
    """Lines appended to ``path``, rotated by size, keeping ``keep`` older files."""

    def __init__(self, path: Path, *, max_bytes: int, keep: int) -> None:
        if max_bytes < 1:
            raise ValueError("--decision-log-max-mb: must be above 0")
        if keep < 0:
            raise ValueError("--decision-log-keep: must not be negative")
        self.path = path
        self._max_bytes = max_bytes
        self._keep = keep
        self._file = self._open()

    def _open(self) -> Any:
        # owner-only: decision logs name users and what they may do
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "ab")

    def _rotate(self) -> None:
        self._file.close()
        if self._keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self._keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = self._open()

    def write(self, lines: list[str]) -> None:
        size = self._file.tell()
        chunk: list[bytes] = []
        for line in lines:
            data = line.encode("utf-8")
            if size and size + len(data) > self._max_bytes:
                self._file.write(b"".join(chunk))
                chunk = []
                self._rotate()
                size = 0
            chunk.append(data)
            size += len(data)
        self._file.write(b"".join(chunk))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def open_sink(target: str, *, max_mb: float, keep: int) -> Sink:
    """``-`` for stdout, else a file path; raises ``OSError``/``ValueError``."""
    if target == "-":
        return StreamSink(sys.stdout)
    return FileSink(Path(target), max_bytes=int(max_mb * 1024 * 1024), keep=keep)


def _picked(metadata: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: metadata[k] for k in keys if k in metadata}


def decision_record(
    at: float,
    request: DecideRequest,
    decision: Decision,
    user_metadata: Mapping[str, Any] | None = None,
    group_metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON object logged for one decision (docs/security.md lists the fields)."""
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds").replace(
            "+00:00", "Z"
        ),
        "decision_id": decision.decision_id,
        "request_id": request.request_id,
        "user": request.user.id if request.user is not None else None,
        "group": request.group.id if request.group is not None else None,
        "model": request.model,
        "served_model": decision.model,
        "routed": decision.routed,
        "allowed": decision.allowed,
        "reason": decision.reason,
        "message": decision.message,
        "matched_rules": list(decision.matched_rules),
        "checks": list(decision.checks),
        "quotas": [
            {"name": q.name, "metric": q.metric, "scope": q.scope, "used": q.used,
             "limit": q.limit, "exceeded": q.exceeded}
            for q in decision.quotas
        ],
        "ruleset_version": decision.ruleset_version,
        "dry_run": request.dry_run,
    }
    s = decision.shadow
    if s.matched_rules:
        record["shadow"] = {
            "matched_rules": list(s.matched_rules), "denied": s.denied, "message": s.message,
            "model": s.model, "routed": s.routed, "checks": list(s.checks),
        }
    if decision.ignored_metadata:
        record["ignored_metadata"] = list(decision.ignored_metadata)
    if user_metadata is not None or group_metadata is not None:
        record["metadata"] = {"user": user_metadata or {}, "group": group_metadata or {}}
    return record


# (unix time, request, decision, user metadata picked, group metadata picked)
_Entry = tuple[float, DecideRequest, Decision, dict[str, Any] | None, dict[str, Any] | None]


class DecisionLog(NullObserver):
    """The engine observer that logs decisions; ``start()`` the writer, ``close()`` to flush.

    ``metadata_keys``: the metadata keys (of users and groups, as the rules saw them)
    whose values go into the log; none by default.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        metadata_keys: frozenset[str] = frozenset(),
        buffer: int = DEFAULT_BUFFER,
        on_dropped: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self._keys = tuple(sorted(metadata_keys))
        self._buffer: deque[_Entry] = deque()
        self._capacity = buffer
        self._on_dropped = on_dropped or (lambda: None)
        self._clock = clock
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tollway-decision-log", daemon=True)
        self._failed_at = -float("inf")

    # ------------------------------------------------------------ the hot path

    def decided(self, request: DecideRequest, decision: Decision, context: EvalContext) -> None:
        if len(self._buffer) >= self._capacity:
            self._on_dropped()
            return
        keys = self._keys
        user = _picked(context.user, keys) if keys else None
        group = _picked(context.group, keys) if keys else None
        self._buffer.append((self._clock(), request, decision, user, group))

    # ------------------------------------------------------------ the writer

    def start(self) -> None:
        self._thread.start()

    def _drain(self) -> int:
        buffer = self._buffer
        entries: list[_Entry] = []
        while buffer:
            entries.append(buffer.popleft())
        if not entries:
            return 0
        lines = [
            json.dumps(decision_record(*e), separators=(",", ":"), ensure_ascii=False) + "\n"
            for e in entries
        ]
        try:
            self._sink.write(lines)
        except (OSError, ValueError) as exc:
            # a full disk loses lines, never decisions: count them, say so once a minute
            for _ in lines:
                self._on_dropped()
            now = time.monotonic()
            if now - self._failed_at > 60:
                self._failed_at = now
                log.error("decision log: cannot write, %d line(s) dropped: %s", len(lines), exc)
        return len(entries)

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._drain():
                self._stopping.wait(_IDLE)
        self._drain()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is buffered and close the sink."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        else:
            self._drain()
        self._sink.close()
