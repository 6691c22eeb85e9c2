"""``tollway usage``: per-user (or per-group) usage of a running server, as terminal tables.

Asks the server over gRPC (``ListUsage``; ``GetUsage`` with ``--user``/``--group``;
``ListSpikes`` with ``--spikes``) and prints with rich. Exit codes: 0 shown, 1 the server could not answer (unreachable,
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

from tollway.policy.usage import Spike, UsageDetail, UsageRecord, need_id
from tollway.policy.usage_query import SpikeQuery, UsagePage, UsageQuery
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

from . import usage_convert

__all__ = ["run", "render_page", "render_detail", "render_spikes"]

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
        filtered = bool(query.search) or query.periodic
        found = f"no {query.kind} match" if filtered else f"no {query.kind} yet"
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


def _amount(metric: str, value: float) -> str:
    return _usd(value) if metric == "cost" else f"{value:,.0f}"


def render_spikes(console: Console, query: SpikeQuery, spikes: list[Spike]) -> None:
    """Who spiked: window amount, baseline average and their ratio, highest first."""
    what = f"{query.metric} in the last {query.window_hours}h"
    if not spikes:
        console.print(f"no {query.kind} spiking ({what} over {query.factor:g}x the "
                      f"{query.baseline_hours}h baseline, at least {query.min:g})")
        return
    table = Table(box=box.SIMPLE_HEAD, header_style="bold")
    table.add_column("User" if query.kind == "users" else "Group", overflow="fold")
    table.add_column(f"Last {query.window_hours}h", justify="right")
    table.add_column("Baseline avg", justify="right")
    table.add_column("Ratio", justify="right")
    for s in spikes:
        table.add_row(
            s.id, _amount(query.metric, s.window_amount),
            _amount(query.metric, s.baseline_average),
            "new" if s.ratio is None else f"{s.ratio:,.1f}x",
        )
    console.print(table)
    console.print(
        f"{len(spikes)} {query.kind} spiking on {what} (over {query.factor:g}x their average "
        f"per {query.window_hours}h of the {query.baseline_hours}h before)",
        style="dim",
    )


def _fail(message: str, code: int = 1) -> int:
    print(f"tollway usage: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    console = Console()
    subject = None
    if args.user and args.group:
        return _fail("--user and --group: give one of them", 2)
    if args.spikes and (args.user or args.group):
        return _fail("--spikes lists entities; it cannot be combined with --user or --group", 2)
    try:
        if args.spikes:
            spike_query = SpikeQuery.parse(
                kind="groups" if args.groups else "users", metric=args.metric,
                window=args.window, baseline=args.baseline, factor=args.factor, min=args.min,
                limit=args.limit,
            )
            return _spikes(console, args.server, spike_query)
        if args.user or args.group:
            flag = "--user" if args.user else "--group"
            subject = ("user_id", need_id(args.user or args.group, flag))
        query = UsageQuery.parse(
            kind="groups" if args.groups else "users",
            sort=args.sort,
            limit=args.limit,
            search=args.search,
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
            request = pb.ListUsageRequest(
                kind=query.kind, search=query.search, sort=query.sort, limit=query.limit,
                offset=query.offset,
            )
            listing = stub.ListUsage(request, timeout=TIMEOUT)
            render_page(console, usage_convert.page_from_proto(listing, query))
    except grpc.RpcError as exc:
        return _fail(_rpc_message(exc, args.server))
    finally:
        channel.close()
    return 0


def _spikes(console: Console, server: str, query: SpikeQuery) -> int:
    request = pb.ListSpikesRequest(
        kind=query.kind, metric=query.metric, window=f"{query.window_hours}h",
        baseline=f"{query.baseline_hours}h", factor=query.factor, min=query.min,
        limit=query.limit,
    )
    channel = grpc.insecure_channel(server)
    try:
        reply = pb_grpc.TollwayStub(channel).ListSpikes(request, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        return _fail(_rpc_message(exc, server))
    finally:
        channel.close()
    render_spikes(console, query, usage_convert.spikes_from_proto(reply, query.entity_kind))
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
