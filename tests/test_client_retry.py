"""The background report queue on its own: order, backoff, bounds, age, refusals, close.

``send`` is the queue's only contact with the world; here it is a function that fails
with real ``grpc.RpcError``s (the kind the synchronous channel raises) as a script says,
and the clock is injected, so nothing waits for real time.
"""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest

from tollway.client.retry import Backoff, ReportRetrier
from tollway.client.stats import Counts
from tollway.v1 import tollway_pb2 as pb

FAST = Backoff(base=0.001, cap=0.005)


class Refused(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A failed call as grpc's synchronous stubs raise it."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    # grpc.Call's other members, unused by the queue
    def initial_metadata(self) -> Any: ...
    def trailing_metadata(self) -> Any: ...
    def is_active(self) -> bool: return False
    def time_remaining(self) -> Any: ...
    def cancel(self) -> bool: return False
    def add_callback(self, callback: Any) -> bool: return False


class Script:
    """``send``: fails with the scripted codes (one per attempt), then delivers."""

    def __init__(self, *failures: grpc.StatusCode) -> None:
        self.failures = list(failures)
        self.attempts: list[str] = []
        self.delivered: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, report: pb.UsageReport) -> None:
        with self.lock:
            self.attempts.append(report.request_id)
            if self.failures:
                raise Refused(self.failures.pop(0), "scripted")
            self.delivered.append(report.request_id)


def _report(i: int) -> pb.UsageReport:
    return pb.UsageReport(request_id=f"r{i}", output_tokens=i)


def test_transient_failures_are_retried_in_order_with_the_same_request_id() -> None:
    send = Script(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    counts = Counts()
    q = ReportRetrier(send, counts, backoff=FAST)
    for i in range(3):
        assert q.submit(_report(i))
    assert q.flush(10)
    assert send.attempts == ["r0", "r0", "r0", "r1", "r2"]
    assert send.delivered == ["r0", "r1", "r2"]
    stats = counts.snapshot(q.pending)
    assert (stats.reports_queued, stats.reports_delivered, stats.reports_dropped) == (3, 3, 0)
    q.close(1)


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL],
)
def test_a_refusal_drops_that_report_and_moves_on(code: grpc.StatusCode) -> None:
    send = Script(code)
    counts = Counts()
    q = ReportRetrier(send, counts, backoff=FAST)
    q.submit(_report(0))
    q.submit(_report(1))
    assert q.flush(10)
    assert send.attempts == ["r0", "r1"] and send.delivered == ["r1"]
    assert counts.snapshot(0).reports_dropped == 1
    q.close(1)


def test_reports_older_than_max_age_are_dropped() -> None:
    now = [1000.0]
    send = Script(*[grpc.StatusCode.UNAVAILABLE] * 1000)
    counts = Counts()
    q = ReportRetrier(send, counts, backoff=FAST, max_age=60, clock=lambda: now[0])
    q.submit(_report(0))
    while len(send.attempts) < 3:
        threading.Event().wait(0.001)
    now[0] += 61
    assert q.flush(10)
    assert send.delivered == [] and counts.snapshot(0).reports_dropped == 1
    q.close(1)


def test_a_full_queue_refuses_and_close_drops_what_is_left() -> None:
    blocked = threading.Event()

    def send(report: pb.UsageReport) -> None:
        blocked.wait(10)
        raise Refused(grpc.StatusCode.UNAVAILABLE)

    counts = Counts()
    q = ReportRetrier(send, counts, capacity=2, backoff=FAST)
    assert [q.submit(_report(i)) for i in range(3)] == [True, True, False]
    assert q.pending == 2
    blocked.set()
    q.close(timeout=0.05)
    stats = counts.snapshot(q.pending)
    assert (stats.reports_queued, stats.reports_dropped, stats.reports_pending) == (2, 3, 0)
    assert not q.submit(_report(9))  # closed


def test_close_delivers_what_it_can_first() -> None:
    send = Script(grpc.StatusCode.UNAVAILABLE)
    counts = Counts()
    q = ReportRetrier(send, counts, backoff=FAST)
    q.submit(_report(0))
    q.close(timeout=10)
    assert send.delivered == ["r0"] and counts.snapshot(0).reports_dropped == 0


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    b = Backoff(base=0.1, cap=2.0)
    assert [b.delay(n, rand=lambda: 1.0) for n in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert b.delay(3, rand=lambda: 0.5) == 0.4
    assert b.delay(10**6, rand=lambda: 1.0) == 2.0
