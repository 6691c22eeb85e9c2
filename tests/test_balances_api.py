"""The balance admin API of a running ``tollway serve``: ``Credit`` and ``GetBalance``
over gRPC, ``POST``/``GET /v1/balances/…`` over HTTP, ``tollway balance credit|show``,
and bad input refused naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from server_harness import Served, eventually, tollway_serve

from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

RULES = """
quota plan limits cost to 1 per month for each group
balance credits of cost for each group warn below 5
balance tokens_left of tokens for each user
rule team {
    when group.id exists
    enforce plan then credits
}
rule people { enforce tokens_left }
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    rules = tmp_path_factory.mktemp("balances") / "b.rules"
    rules.write_text(RULES)
    with tollway_serve(rules) as s:
        yield s


@pytest.fixture
def stub(served: Served) -> Iterator[pb_grpc.TollwayStub]:
    with grpc.insecure_channel(served.grpc) as channel:
        yield pb_grpc.TollwayStub(channel)


def http(served: Served, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{served.http}{path}", data=data, method=method,
        headers={"Content-Type": "application/json"} if data is not None else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_credit_and_get_balance_over_grpc(stub: pb_grpc.TollwayStub) -> None:
    ack = stub.Credit(pb.CreditRequest(kind="group", id="g1", balance="credits", amount=12.5,
                                       reason="bought", idempotency_key="order-1"))
    assert ack.applied and ack.balance.available == 12.5 and not ack.balance.low
    again = stub.Credit(pb.CreditRequest(kind="group", id="g1", balance="credits", amount=12.5,
                                         idempotency_key="order-1"))
    assert not again.applied and again.balance.available == 12.5
    stub.Credit(pb.CreditRequest(kind="user", id="ann", balance="tokens_left", amount=10,
                                 idempotency_key="ann-tokens"))
    d = stub.Decide(pb.DecideRequest(request_id="r", user=pb.Entity(id="ann"),
                                     group=pb.Entity(id="g1"), model="m",
                                     estimate=pb.Estimate(cost_usd=3)))
    kinds = {q.name: (q.kind, round(q.used, 9), round(q.remaining, 9)) for q in d.quotas}
    assert d.allowed
    assert kinds == {"plan": ("quota", 1.0, 0.0), "credits": ("balance", 2.0, 10.5),
                     "tokens_left": ("balance", 0.0, 10.0)}
    info = stub.GetBalance(pb.GetBalanceRequest(kind="groups", id="g1"))
    assert info.kind == "group" and [b.name for b in info.balances] == ["credits"]
    (credits,) = info.balances
    assert (credits.available, credits.reserved) == (10.5, 2.0)
    ledger = eventually(
        lambda: [(x.kind, x.amount, x.ref) for x in stub.GetBalance(
            pb.GetBalanceRequest(kind="group", id="g1")).balances[0].ledger],
        [("credit", 12.5, "order-1")],
    )
    assert ledger == [("credit", 12.5, "order-1")]


def test_a_decision_names_the_balance_kind(stub: pb_grpc.TollwayStub) -> None:
    stub.Credit(pb.CreditRequest(kind="user", id="bo", balance="tokens_left", amount=100,
                                 idempotency_key="t"))
    d = stub.Decide(pb.DecideRequest(request_id="x", user=pb.Entity(id="bo"), model="m",
                                     estimate=pb.Estimate(output_tokens=40)))
    assert d.allowed
    (q,) = d.quotas
    assert (q.name, q.kind, q.metric, q.used, q.remaining, q.scope) == (
        "tokens_left", "balance", "tokens", 40, 60, "user")
    refused = stub.Decide(pb.DecideRequest(request_id="y", user=pb.Entity(id="bo"), model="m",
                                           estimate=pb.Estimate(output_tokens=61)))
    assert refused.reason == pb.QUOTA_EXCEEDED and "balance tokens_left" in refused.message


@pytest.mark.parametrize(
    ("request_fields", "words"),
    [
        ({"kind": "group", "id": "g", "balance": "nope", "amount": 1, "idempotency_key": "k"},
         "no balance named 'nope'"),
        ({"kind": "team", "id": "g", "balance": "credits", "amount": 1, "idempotency_key": "k"},
         "kind:"),
        ({"kind": "group", "id": "g", "balance": "credits", "amount": 0, "idempotency_key": "k"},
         "amount: must not be 0"),
        ({"kind": "group", "id": "g", "balance": "credits", "amount": 1}, "idempotency_key"),
        ({"kind": "user", "id": "g", "balance": "credits", "amount": 1, "idempotency_key": "k"},
         "not for each user"),
    ],
)
def test_bad_credits_are_invalid_argument(
    stub: pb_grpc.TollwayStub, request_fields: dict[str, Any], words: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Credit(pb.CreditRequest(**request_fields))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (info.value.details() or "")


def test_credit_and_show_over_http(served: Served) -> None:
    status, body = http(served, "POST", "/v1/balances/groups/h1/credits",
                        {"amount": 4, "reason": "promo", "idempotency_key": "p"})
    assert status == 200 and body["applied"] and body["balance"]["available"] == 4
    assert body["balance"]["low"]  # under warn below 5
    status, body = http(served, "POST", "/v1/balances/group/h1/credits",
                        {"amount": 4, "idempotency_key": "p"})
    assert (status, body["applied"]) == (200, False)
    status, body = http(served, "GET", "/v1/balances/group/h1")
    assert status == 200 and body["kind"] == "group" and body["id"] == "h1"
    (credits,) = body["balances"]
    assert (credits["available"], credits["reserved"]) == (4, 0)


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v1/balances/group/h2/credits", {"amount": 1, "idempotency_key": "k", "x": 1}, 400,
         "unknown field"),
        ("/v1/balances/group/h2/credits", {"amount": "1", "idempotency_key": "k"}, 400,
         "amount: must be a number"),
        ("/v1/balances/group/h2/credits", [1], 400, "must be an object"),
        ("/v1/balances/group/h2/nope", {"amount": 1, "idempotency_key": "k"}, 400,
         "no balance named"),
        ("/v1/balances/teams/h2/credits", {"amount": 1, "idempotency_key": "k"}, 400, "kind"),
    ],
)
def test_bad_http_credits_are_400(
    served: Served, path: str, body: Any, status: int, words: str
) -> None:
    got, data = http(served, "POST", path, body)
    assert got == status and words in data["error"]["message"]


def cli(served: Served, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollway", "balance", *words, "--server", served.grpc],
        capture_output=True, text=True, timeout=60,
    )


def test_the_cli_credits_and_shows(served: Served) -> None:
    done = cli(served, "credit", "--group", "c1", "--balance", "credits", "--amount", "7.25",
               "--reason", "invoice 42", "--idempotency-key", "inv-42")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "credited (idempotency key inv-42)",
        "credits: $7.25 available, $0 reserved",
    ]
    again = cli(served, "credit", "--group", "c1", "--balance", "credits", "--amount", "7.25",
                "--idempotency-key", "inv-42", "--json")
    assert json.loads(again.stdout)["applied"] is False
    def reasons() -> list[str]:
        (b,) = json.loads(cli(served, "show", "--group", "c1", "--json").stdout)["balances"]
        assert b["available"] == 7.25
        return [x["reason"] for x in b["ledger"]]

    assert eventually(reasons, ["invoice 42"]) == ["invoice 42"]
    shown = cli(served, "show", "--group", "c1")
    assert shown.stdout.splitlines()[0] == "credits: $7.25 available, $0 reserved"
    assert "\tcredit\t$7.25\tinvoice 42\tinv-42" in shown.stdout
    refused = cli(served, "credit", "--group", "c1", "--balance", "nope", "--amount", "1")
    assert refused.returncode == 1 and "no balance named 'nope'" in refused.stderr
    assert cli(served, "show").returncode == 2
    assert cli(served, "credit", "--group", "c1").returncode == 2


def test_balance_routes_need_admin(tmp_path: Path) -> None:
    from tollway.server.roles import GRPC_ACCESS, HTTP_ACCESS

    assert GRPC_ACCESS["/tollway.v1.Tollway/Credit"] == "admin"
    assert GRPC_ACCESS["/tollway.v1.Tollway/GetBalance"] == "admin"
    assert HTTP_ACCESS[("POST", "/v1/balances/{kind}/{id}/{balance}")] == "admin"
