"""``tollway usage``: per-user (or per-group) usage of a running server, as terminal tables.

Asks the server over gRPC (``ListUsage``, or ``GetUsage`` with ``--user``/``--group``)
and prints with rich. Exit codes: 0 shown, 1 the server could not answer (unreachable,
no such user, no usage support), 2 bad flags (checked here before any call).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

import grpc
from rich import box
from rich.console import Console
from rich.table import Table

from tollway.policy.usage import UsageDetail, UsagePage, UsageQuery, UsageRecord
from tollway.policy.validate import need_id
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

from . import usage_convert

__all__ = ["run", "render_page", "render_detail"]

TIMEOUT = 10.0


def _when(t: float) -> str:
    if t <= 0:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _usd(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 100 else f"${amount:,.4f}"


def _top_model(rec: UsageRecord) -> str:
    return rec.models[0].model or "(none)" if rec.models else ""


def render_page(console: Console, page: UsagePage) -> None:
    """The listing: one row per entity with cost, tokens, requests and last seen."""
    query = page.query
    who = "User" if query.kind == "users" else "Group"
    table = Table(box=box.SIMPLE_HEAD, header_style="bold")
    table.add_column("#", justify="right", style="dim")
    table.add_column(who, overflow="fold")
    table.add_column("Cost (USD)", justify="right")
    table.add_column("Tokens", justify="right")
    table.add_column("Requests", justify="right")
    table.add_column("Last seen (UTC)")
    table.add_column("Top model", overflow="fold")
    for rank, rec in enumerate(page.results, start=query.offset + 1):
        table.add_row(
            str(rank),
            rec.id,
            _usd(rec.total_cost),
            f"{rec.total_tokens:,}",
            f"{rec.request_count:,}",
            _when(rec.last_seen),
            _top_model(rec),
        )
    if not page.results:
        found = f"no {query.kind} match" if query.filtered else f"no {query.kind} yet"
        console.print(found + (f" (offset {query.offset})" if query.offset else ""))
        return
    console.print(table)
    first = query.offset + 1
    last = query.offset + len(page.results)
    console.print(
        f"{query.kind} {first}-{last} of {page.count}, sorted by {query.sort}"
        + (f", matching {query.search!r}" if query.search else ""),
        style="dim",
    )


def render_detail(console: Console, detail: UsageDetail) -> None:
    """One entity: its aggregates, cost by model and its latest reports."""
    rec = detail.usage
    console.print(f"[bold]{rec.kind} {rec.id}[/bold]", highlight=False)
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="dim")
    summary.add_column()
    summary.add_row("cost", _usd(rec.total_cost))
    summary.add_row(
        "tokens", f"{rec.total_tokens:,} ({rec.input_tokens:,} in, {rec.output_tokens:,} out)"
    )
    summary.add_row("requests", f"{rec.request_count:,}")
    summary.add_row("model time", f"{rec.total_duration:,.1f} s")
    summary.add_row("first seen", _when(rec.first_seen))
    summary.add_row("last seen", _when(rec.last_seen))
    console.print(summary)

    models = Table(title="Cost by model", box=box.SIMPLE_HEAD, title_justify="left")
    models.add_column("Model", overflow="fold")
    models.add_column("Cost (USD)", justify="right")
    models.add_column("Share", justify="right")
    models.add_column("Tokens", justify="right")
    models.add_column("Requests", justify="right")
    for m in rec.models:
        share = f"{m.total_cost / rec.total_cost:.0%}" if rec.total_cost else "-"
        models.add_row(
            m.model or "(none)", _usd(m.total_cost), share, f"{m.total_tokens:,}",
            f"{m.request_count:,}",
        )
    console.print(models)

    recent = Table(
        title=f"Latest {len(detail.recent_reports)} reports", box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    for name, justify in (
        ("Time (UTC)", "left"), ("Model", "left"), ("Tokens", "right"),
        ("Cost (USD)", "right"), ("Seconds", "right"), ("Status", "left"),
        ("Request", "left"),
    ):
        recent.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for e in detail.recent_reports:
        recent.add_row(
            _when(e.time), e.model, f"{e.total_tokens:,}", _usd(e.cost_usd),
            f"{e.duration_seconds:.2f}", e.status, e.request_id,
        )
    console.print(recent)


def _fail(message: str, code: int = 1) -> int:
    print(f"tollway usage: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    console = Console()
    subject = None
    try:
        if args.user or args.group:
            flag = "--user" if args.user else "--group"
            subject = ("user_id", need_id(args.user or args.group, flag))
        query = UsageQuery.parse(
            kind="groups" if args.groups else "users",
            sort=args.sort,
            limit=args.limit,
            offset=args.offset,
            search=args.search,
            start=args.start,
            end=args.end,
        )
    except ValueError as exc:
        text = str(exc)
        return _fail(text if text.startswith("--") else "--" + text, 2)
    if subject is not None and args.group:
        subject = ("group_id", subject[1])

    channel = grpc.insecure_channel(args.server)
    try:
        stub = pb_grpc.TollwayStub(channel)
        if subject is not None:
            reply = stub.GetUsage(pb.GetUsageRequest(**{subject[0]: subject[1]}), timeout=TIMEOUT)
            render_detail(console, usage_convert.detail_from_proto(reply))
        else:
            request = usage_convert.list_request_to_proto(query)
            listing = stub.ListUsage(request, timeout=TIMEOUT)
            render_page(console, usage_convert.page_from_proto(listing, query))
    except grpc.RpcError as exc:
        return _fail(_rpc_message(exc, args.server))
    finally:
        channel.close()
    return 0


def _rpc_message(exc: grpc.RpcError, server: str) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else ""
    if code == grpc.StatusCode.UNAVAILABLE and "store" in details:
        return f"the server at {server} answered: {details}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"cannot reach the tollway server at {server}"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"the server at {server} does not serve usage"
    if code == grpc.StatusCode.NOT_FOUND:
        return details or "not found"
    return f"{details or 'request failed'} ({code.name if code else 'error'})"
