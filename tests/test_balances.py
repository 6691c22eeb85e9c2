"""Prepaid balances through the engine: a quota spent first then a balance, a balance
alone, settlement by reports below and above the estimate, credits applied once per
idempotency key, the ledger in the usage database and the live balance rebuilt from it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backends import Backend
from conftest import ROOMY

from tollway import Engine
from tollway.policy.model import Decision

RULES = """
quota plan limits cost to 1 per month for each group
balance credits of cost for each group warn below 2
balance wallet of cost for each user
rule team {
    when group.id exists
    enforce plan then credits
}
rule solo {
    when not (group.id exists)
    enforce wallet
}
"""

Make = Callable[..., Engine]


@pytest.fixture
def make(backend: Backend, tmp_path: Path) -> Iterator[Make]:
    """``make(rules, db=None)``: an engine on the backend's store with a SQLite usage
    database of its own (or ``db``)."""
    made: list[Engine] = []

    def factory(rules: str = RULES, db: str | None = None, prefix: str | None = None) -> Engine:
        url = db or f"sqlite:///{tmp_path / f'usage{len(made)}.db'}"
        if backend.name == "memory":
            e = Engine.from_text(rules, store="memory", usage_db=url)
        else:
            e = Engine.from_text(rules, store=backend.store, key_prefix=prefix or backend.prefix(),
                                 usage_db=url, store_options=ROOMY)
        made.append(e)
        return e

    yield factory
    for e in made:
        e.close()


def team(e: Engine, cost: float, rid: str) -> Decision:
    return e.decide({"request_id": rid, "user": "ann", "group": "acme", "model": "m",
                     "estimate": {"cost_usd": cost}})


def report(e: Engine, d: Decision, rid: str, cost: float, user: str = "ann",
           group: str | None = "acme") -> str:
    body: dict[str, object] = {"request_id": rid, "decision_id": d.decision_id, "user": user,
                               "model": "m", "cost_usd": cost}
    if group is not None:
        body["group"] = group
    return e.report(body).outcome


def status(d: Decision, name: str) -> tuple[str, float, float, bool]:
    q = next(q for q in d.quotas if q.name == name)
    return q.kind, round(q.used, 9), round(q.remaining, 9), q.exceeded


def available(e: Engine, kind: str, ident: str, name: str) -> float:
    view = next(b for b in e.get_balance(kind, ident) if b.name == name)
    return view.available


def test_the_plan_is_spent_first_then_the_credits_then_both_refuse(make: Make) -> None:
    e = make()
    first = team(e, 0.6, "r1")
    assert first.allowed
    assert status(first, "plan") == ("quota", 0.6, 0.4, False)
    assert status(first, "credits") == ("balance", 0.0, 0.0, False)
    # the plan has 0.4 left and the balance nothing: refused, naming both
    refused = team(e, 0.6, "r2")
    assert not refused.allowed and refused.reason == "QUOTA_EXCEEDED"
    assert "plan" in refused.message and "balance credits" in refused.message
    applied, view = e.credit("group", "acme", "credits", 3, reason="bought",
                             idempotency_key="k1")
    assert applied and view.available == 3
    # straddling: 0.4 from the plan, 0.2 from the credits
    straddle = team(e, 0.6, "r3")
    assert straddle.allowed
    assert status(straddle, "plan") == ("quota", 1.0, 0.0, False)
    assert status(straddle, "credits") == ("balance", 0.2, 2.8, False)
    # the plan is used up: all of it from the credits, until they cannot cover it
    assert team(e, 2.5, "r4").allowed
    last = team(e, 0.31, "r5")
    assert not last.allowed and status(last, "credits")[2] == 0.3
    assert team(e, 0.3, "r6").allowed
    assert available(e, "group", "acme", "credits") == 0


def test_reports_settle_below_and_above_the_estimate_to_the_nano_dollar(make: Make) -> None:
    e = make()
    e.credit("group", "acme", "credits", 5, idempotency_key="k")
    plan = team(e, 1.0, "fill")  # the whole plan
    assert report(e, plan, "fill", 1.0) == "settled"
    below = team(e, 0.5, "below")
    assert report(e, below, "below", 0.123456789) == "settled"
    assert available(e, "group", "acme", "credits") == pytest.approx(5 - 0.123456789, abs=1e-12)
    above = team(e, 0.5, "above")
    assert report(e, above, "above", 0.9) == "settled"
    assert available(e, "group", "acme", "credits") == pytest.approx(
        5 - 0.123456789 - 0.9, abs=1e-12)
    assert e.flush_usage()
    entries = next(b for b in e.get_balance("group", "acme") if b.name == "credits").ledger
    assert [(x.kind, round(x.amount, 9)) for x in entries] == [
        ("spend", -0.9), ("spend", -0.123456789), ("credit", 5.0)]


def test_a_straddling_reservation_refunds_the_balance_first(make: Make) -> None:
    e = make()
    e.credit("group", "acme", "credits", 1, idempotency_key="k")
    d = team(e, 1.5, "r")  # 1 from the plan, 0.5 from the credits
    assert status(d, "credits")[1] == 0.5
    assert report(e, d, "r", 1.2) == "settled"  # 1 plan, 0.2 credits
    assert available(e, "group", "acme", "credits") == pytest.approx(0.8)
    # the plan stays full: the next request is paid by the credits alone
    assert status(team(e, 0.1, "n"), "credits")[1] == 0.1


def test_a_report_after_a_top_up_settles_against_the_same_balance(make: Make) -> None:
    e = make()
    e.credit("user", "bob", "wallet", 1, idempotency_key="a")
    d = e.decide({"request_id": "r", "user": "bob", "model": "m", "estimate": {"cost_usd": 0.8}})
    assert d.allowed and status(d, "wallet") == ("balance", 0.8, 0.2, False)
    e.credit("user", "bob", "wallet", 10, idempotency_key="b")
    assert available(e, "user", "bob", "wallet") == pytest.approx(10.2)
    assert report(e, d, "r", 0.5, user="bob", group=None) == "settled"
    assert available(e, "user", "bob", "wallet") == pytest.approx(10.5)


def test_a_credit_applies_once_per_idempotency_key(make: Make) -> None:
    e = make()
    assert e.credit("user", "bob", "wallet", 2, reason="promo", idempotency_key="same")[0]
    assert not e.credit("user", "bob", "wallet", 2, reason="promo", idempotency_key="same")[0]
    assert e.credit("user", "bob", "wallet", -0.5, reason="fix", idempotency_key="other")[0]
    assert e.flush_usage()
    # written to the ledger, a second engine on the same database still knows the key
    assert available(e, "user", "bob", "wallet") == pytest.approx(1.5)
    lines = next(b for b in e.get_balance("user", "bob") if b.name == "wallet").ledger
    assert [(x.kind, x.amount, x.reason, x.ref) for x in lines] == [
        ("credit", -0.5, "fix", "other"), ("credit", 2.0, "promo", "same")]


def test_balances_are_rebuilt_from_the_ledger_on_start(make: Make, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    first = make(db=db)
    first.credit("user", "bob", "wallet", 3, idempotency_key="k")
    d = first.decide({"request_id": "r", "user": "bob", "model": "m",
                      "estimate": {"cost_usd": 1}})
    report(first, d, "r", 0.25, user="bob", group=None)
    first.close()
    again = make(db=db)  # an empty store (memory), or fresh keys (Redis)
    assert available(again, "user", "bob", "wallet") == pytest.approx(2.75)
    # the same key is not applied again from a new process
    assert not again.credit("user", "bob", "wallet", 3, idempotency_key="k")[0]


def test_a_decision_that_leaves_a_balance_under_warn_below_says_so(make: Make) -> None:
    e = make()
    e.credit("group", "acme", "credits", 2.5, idempotency_key="k")
    assert "balance_low" not in team(e, 1, "plan").annotations  # the plan pays
    assert "balance_low" not in team(e, 0.4, "a").annotations  # 2.1 left
    low = team(e, 0.2, "b")  # 1.9 left, under 2
    assert low.allowed and low.annotations["balance_low"] == "credits"
    view = next(b for b in e.get_balance("group", "acme") if b.name == "credits")
    assert view.low and view.available == pytest.approx(1.9) and view.reserved == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("group", "acme", "nope", 1, "k"), "no balance named 'nope'"),
        (("user", "acme", "credits", 1, "k"), "counted for each group, not for each user"),
        (("group", "acme", "credits", 0, "k"), "amount: must not be 0"),
        (("group", "acme", "credits", float("nan"), "k"), "amount: must be within"),
        (("group", "acme", "credits", 1e12, "k"), "amount: must be within"),
        (("group", "acme", "credits", True, "k"), "amount: must be a number"),
        (("group", "acme", "credits", 1, ""), "idempotency_key"),
        (("thing", "acme", "credits", 1, "k"), "kind"),
        (("group", "", "credits", 1, "k"), "id"),
    ],
)
def test_bad_credits_are_refused_naming_the_field(
    make: Make, args: tuple[str, str, str, float, str], message: str
) -> None:
    e = make()
    kind, ident, name, amount, key = args
    with pytest.raises(ValueError, match=message):
        e.credit(kind, ident, name, amount, idempotency_key=key)
    assert available(e, "group", "acme", "credits") == 0
