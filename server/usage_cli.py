"""``tollway usage``: per-user (or per-group) usage of a running server.

Asks the server over gRPC (``ListUsage``; ``GetUsage`` with ``--user``/``--group``;
``ListSpikes`` with ``--spikes``)
and prints a table fitted to the terminal, plain tab-separated lines when standard output
is not a terminal (the page summary and the next-page hint then go to stderr), or JSON /
CSV with ``--json`` / ``--csv``. Exit codes: 0 shown, 1 the server could not answer
(unreachable, no such user, no usage support), 2 bad flags (checked before any call).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from rich.console import Console
from rich.text import Text

from tollway.policy.usage import Spike, UsageDetail
from tollway.policy.usage_query import SpikeQuery, UsagePage, UsageQuery
from tollway.policy.validate import EntityKind, need_id
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

from . import usage_convert
from .csv_export import Cell, CsvEncoder
from .usage_csv import ACTIVITY_COLUMNS, RECORD_COLUMNS, activity_row, record_row
from .usage_view import Line, detail_lines, page_lines, page_summary, spike_lines, spike_summary

__all__ = ["run"]

TIMEOUT = 10.0
# flags of a listing that the next page keeps, in the order the hint writes them
LISTING_FLAGS = ("server", "groups", "sort", "limit", "search", "start", "end")


def _fail(message: str, code: int = 1) -> int:
    print(f"tollway usage: {message}", file=sys.stderr)
    return code


def next_page_command(args: argparse.Namespace, offset: int) -> str:
    """The command line that shows the page at ``offset`` with the same flags."""
    words = ["tollway", "usage"]
    for name in LISTING_FLAGS:
        if name not in args.given:
            continue
        value = getattr(args, name)
        if value is True:
            words.append(f"--{name}")
        elif str(value).startswith("-"):  # a descending sort: one word, or it reads as a flag
            words.append(f"--{name}={value}")
        else:
            words += [f"--{name}", str(value)]
    words += ["--offset", str(offset)]
    return shlex.join(words)


def _emit(lines: list[Line], console: Console | None) -> None:
    for style, text in lines:
        if console is None:
            print(text)
        else:
            console.print(Text(text, style=style), soft_wrap=True)


def _note(text: str, console: Console | None) -> None:
    """A line about the output (summary, next page): dim on a terminal, else on stderr."""
    if console is None:
        print(text, file=sys.stderr)
    else:
        console.print(Text(text, style="dim"), soft_wrap=True)


def _json_page(page: UsagePage) -> dict[str, Any]:
    return {"next": page.next, "previous": page.previous, **page.to_dict()}


@dataclass(frozen=True)
class _View:
    """One answer in every form: JSON, CSV, and lines for a terminal or a pipe."""

    json: Any
    csv_header: tuple[str, ...]
    csv_rows: list[list[Cell]]
    lines: Callable[[int | None], list[Line]]  # given the terminal's width, or None
    notes: tuple[str, ...] = ()  # about the output: the page, the next page


def _show(view: _View, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(view.json, indent=2, ensure_ascii=False))
    elif args.csv:
        sys.stdout.write(CsvEncoder().encode([view.csv_header, *view.csv_rows]).decode())
    else:
        tty = sys.stdout.isatty()
        console = Console(highlight=False) if tty else None
        _emit(view.lines(shutil.get_terminal_size().columns if tty else None), console)
        for note in view.notes:
            _note(note, console)


def _page_view(page: UsagePage, args: argparse.Namespace) -> _View:
    notes = [page_summary(page)]
    if page.next is not None:  # one line of its own: a command to copy, never broken
        notes.append(f"next page: {next_page_command(args, page.next)}")
    return _View(
        _json_page(page), RECORD_COLUMNS, [record_row(r) for r in page.results],
        lambda width: page_lines(page, width), tuple(notes),
    )


def _detail_view(detail: UsageDetail) -> _View:
    return _View(
        detail.to_dict(), ACTIVITY_COLUMNS, [activity_row(e) for e in detail.recent_reports],
        lambda width: detail_lines(detail, width),
    )


def _spikes_view(query: SpikeQuery, spikes: list[Spike]) -> _View:
    header = (f"{query.entity_kind}_id", "window_amount", "baseline_average", "ratio")
    rows: list[list[Cell]] = [
        [s.id, s.window_amount, s.baseline_average, "" if s.ratio is None else s.ratio]
        for s in spikes
    ]
    return _View(
        [s.to_dict() for s in spikes], header, rows,
        lambda width: spike_lines(query, spikes, width), (spike_summary(query, spikes),),
    )


def _spikes(args: argparse.Namespace) -> int:
    try:
        query = SpikeQuery.parse(
            kind="groups" if args.groups else "users", metric=args.metric,
            window=args.window, baseline=args.baseline, factor=args.factor, min=args.min,
            limit=args.limit,
        )
    except ValueError as exc:
        return _fail("--" + str(exc), 2)
    request = pb.ListSpikesRequest(
        kind=query.kind, metric=query.metric, window=f"{query.window_hours}h",
        baseline=f"{query.baseline_hours}h", factor=query.factor, min=query.min,
        limit=query.limit,
    )
    channel = grpc.insecure_channel(args.server)
    try:
        reply = pb_grpc.TollwayStub(channel).ListSpikes(request, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        return _fail(_rpc_message(exc, args.server))
    finally:
        channel.close()
    _show(_spikes_view(query, usage_convert.spikes_from_proto(reply, query.entity_kind)), args)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.spikes:
        return _spikes(args)
    subject: tuple[EntityKind, str] | None = None
    try:
        if args.user is not None:
            subject = ("user", need_id(args.user, "--user"))
        elif args.group is not None:
            subject = ("group", need_id(args.group, "--group"))
        query = UsageQuery.parse(
            kind="groups" if args.groups else "users", sort=args.sort, limit=args.limit,
            offset=args.offset, search=args.search, start=args.start, end=args.end,
        )
    except ValueError as exc:
        text = str(exc)
        return _fail(text if text.startswith("--") else "--" + text, 2)

    channel = grpc.insecure_channel(args.server)
    try:
        stub = pb_grpc.TollwayStub(channel)
        if subject is not None:
            reply = stub.GetUsage(usage_convert.get_request_to_proto(*subject), timeout=TIMEOUT)
            _show(_detail_view(usage_convert.detail_from_proto(reply)), args)
        else:
            listing = stub.ListUsage(usage_convert.list_request_to_proto(query), timeout=TIMEOUT)
            _show(_page_view(usage_convert.page_from_proto(listing, query), args), args)
    except grpc.RpcError as exc:
        return _fail(_rpc_message(exc, args.server))
    finally:
        channel.close()
    return 0


def _rpc_message(exc: grpc.RpcError, server: str) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else ""
    if code == grpc.StatusCode.UNAVAILABLE and ("store" in details or "database" in details):
        return f"the server at {server} answered: {details}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"cannot reach the tollway server at {server}"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"the server at {server} does not serve usage"
    if code == grpc.StatusCode.NOT_FOUND:
        return details or "not found"
    return f"{details or 'request failed'} ({code.name if code else 'error'})"
