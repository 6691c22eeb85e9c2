"""``tollway balance credit|show``: top up or show balances of a running server over gRPC
(``Credit``, ``GetBalance``). Exit codes: 0 done, 1 the server refused or could not
answer, 2 bad flags (checked before any call)."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from typing import Any

import grpc

from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

from .convert import seconds_of

__all__ = ["run"]

TIMEOUT = 10.0


def _fail(message: str, code: int = 1) -> int:
    print(f"tollway balance: {message}", file=sys.stderr)
    return code


def _balance_dict(b: pb.BalanceStatus) -> dict[str, Any]:
    from tollway.policy.usage import format_time

    return {
        "name": b.name, "metric": b.metric, "available": b.available, "reserved": b.reserved,
        "low": b.low,
        "ledger": [
            {"time": format_time(seconds_of(x.time)), "kind": x.kind, "amount": x.amount,
             "reason": x.reason, "ref": x.ref}
            for x in b.ledger
        ],
    }


def _amount(value: float, metric: str) -> str:
    return f"${value:,.9f}".rstrip("0").rstrip(".") if metric == "cost" else f"{value:g} {metric}"


def _print_balance(b: dict[str, Any], entries: bool) -> None:
    low = "  (low)" if b["low"] else ""
    print(f"{b['name']}: {_amount(b['available'], b['metric'])} available, "
          f"{_amount(b['reserved'], b['metric'])} reserved{low}")
    if entries:
        for x in b["ledger"]:
            words = "\t".join(w for w in (x["reason"], x["ref"]) if w)
            print(f"  {x['time']}\t{x['kind']}\t{_amount(x['amount'], b['metric'])}\t{words}")


def run(args: argparse.Namespace) -> int:
    if (args.user is None) == (args.group is None):
        return _fail("give --user ID or --group ID", 2)
    kind, ident = ("user", args.user) if args.user is not None else ("group", args.group)
    if args.action == "credit":
        if args.balance is None or args.amount is None:
            return _fail("credit needs --balance NAME and --amount X", 2)
    elif args.balance is not None or args.amount is not None or args.idempotency_key:
        return _fail("show takes no --balance, --amount or --idempotency-key", 2)
    channel = grpc.insecure_channel(args.server)
    try:
        stub = pb_grpc.TollwayStub(channel)
        if args.action == "credit":
            key = args.idempotency_key or uuid.uuid4().hex
            ack = stub.Credit(pb.CreditRequest(
                kind=kind, id=ident, balance=args.balance, amount=args.amount,
                reason=args.reason or "", idempotency_key=key,
            ), timeout=TIMEOUT)
            out = {"applied": ack.applied, "idempotency_key": key,
                   "balance": _balance_dict(ack.balance)}
            if args.json:
                print(json.dumps(out, ensure_ascii=False))
            else:
                verb = "credited" if ack.applied else "already applied, nothing changed"
                print(f"{verb} (idempotency key {key})")
                _print_balance(out["balance"], entries=False)
            return 0
        info = stub.GetBalance(pb.GetBalanceRequest(kind=kind, id=ident), timeout=TIMEOUT)
        shown = [_balance_dict(b) for b in info.balances]
        if args.json:
            print(json.dumps({"kind": info.kind, "id": info.id, "balances": shown},
                             ensure_ascii=False))
        elif not shown:
            print(f"no balance of the rules is counted for each {kind}")
        for b in [] if args.json else shown:
            _print_balance(b, entries=True)
        return 0
    except grpc.RpcError as exc:
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return _fail(f"{args.server}: {details}")
    finally:
        channel.close()
