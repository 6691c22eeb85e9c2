"""The engine end to end, in process: rules, entities, quotas, reports, reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollway import Engine, RulesError

START = 1_768_478_400.0  # 2026-01-15T12:00:00Z, a Thursday


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def engine(text: str, clock: Clock | None = None) -> Engine:
    return Engine.from_text(text, store="memory", clock=clock or Clock())


def user(uid: str, **metadata: object) -> dict[str, object]:
    return {"id": uid, "metadata": metadata} if metadata else {"id": uid}


# ----------------------------------------------------------------- combining


def test_deny_overrides_and_highest_priority_message_wins() -> None:
    e = engine(
        """
        rule low { when user.tier == "free" deny "low" }
        rule high priority 10 { when user.tier == "free" deny "high" }
        rule allow_all { allow }
        """
    )
    d = e.decide({"user": user("u1", tier="free"), "model": "m"})
    assert not d.allowed
    assert d.reason == "DENIED_BY_RULE"
    assert d.message == "high"
    assert set(d.matched_rules) == {"low", "high", "allow_all"}
    assert e.decide({"user": user("u2", tier="pro"), "model": "m"}).allowed


def test_default_deny_unless_a_rule_allows() -> None:
    e = engine(
        """
        default deny "not allowed here"
        rule pros { when user.tier == "pro" allow }
        """
    )
    d = e.decide({"model": "m", "user": user("u1", tier="free")})
    assert (d.allowed, d.reason, d.message) == (False, "DEFAULT_DENY", "not allowed here")
    assert e.decide({"model": "m", "user": user("u2", tier="pro")}).reason == "ALLOWED"


def test_routes_by_priority_and_condition() -> None:
    e = engine(
        """
        rule cheap { when user.tier == "free" route "mini" if request.model in ["big", "huge"] }
        rule vip priority 5 { when user.vip == true route "claude" if request.model ~ "open*" }
        rule eu { when user.region == "eu" route "azure-eu" }
        """
    )
    d = e.decide({"user": user("u", tier="free"), "model": "big"})
    assert (d.model, d.routed) == ("mini", True)
    d = e.decide({"user": user("u", tier="free"), "model": "small"})
    assert (d.model, d.routed) == ("small", False)
    d = e.decide({"user": user("v", tier="free", vip=True), "model": "openai/x"})
    assert d.model == "claude"  # higher priority route wins
    d = e.decide({"user": user("v", tier="free", vip=True), "model": "big"})
    assert d.model == "mini"  # vip's `if` fails, next route applies


def test_checks_union_in_priority_order_and_annotations_higher_priority_wins() -> None:
    e = engine(
        """
        rule a priority 1 { check "pii", "moderation" annotate "p" = "low" annotate "a" = "1" }
        rule b priority 9 { check "moderation", "jailbreak" annotate "p" = "high" }
        """
    )
    d = e.decide({"model": "m"})
    assert d.checks == ("moderation", "jailbreak", "pii")
    assert d.annotations == {"p": "high", "a": "1"}


def test_shadow_rules_are_reported_not_enforced() -> None:
    e = engine(
        """
        rule trial shadow { when user.tier == "pro" deny "would deny" route "mini" check "x" }
        """
    )
    d = e.decide({"user": user("u", tier="pro"), "model": "big"})
    assert d.allowed and d.model == "big" and not d.checks
    assert d.matched_rules == ()
    assert d.shadow.matched_rules == ("trial",)
    assert d.shadow.denied and d.shadow.message == "would deny"
    assert d.shadow.model == "mini" and d.shadow.routed
    assert d.shadow.checks == ("x",)


# --------------------------------------------------------- entities, membership


def test_metadata_is_merged_and_null_removes_a_key() -> None:
    e = engine('rule free { when user.tier == "free" deny "free" }')
    assert not e.decide({"model": "m", "user": user("u1", tier="free", region="eu")}).allowed
    # no metadata sent: the stored metadata still applies
    assert not e.decide({"model": "m", "user": user("u1")}).allowed
    stored = e.get_entity("user", "u1")
    assert stored is not None and dict(stored.metadata) == {"tier": "free", "region": "eu"}
    assert e.decide({"model": "m", "user": {"id": "u1", "metadata": {"tier": None}}}).allowed
    stored = e.get_entity("user", "u1")
    assert stored is not None and dict(stored.metadata) == {"region": "eu"}


def test_user_and_group_are_linked_and_user_only_requests_skip_group_rules() -> None:
    e = engine(
        """
        quota per_group limits requests to 1 per 1h for each group
        rule acme { when group.id == "acme" enforce per_group check "acme-audit" }
        """
    )
    d = e.decide({"model": "m", "user": user("alice"), "group": {"id": "acme"}})
    assert d.allowed and d.checks == ("acme-audit",)
    assert [q.name for q in d.quotas] == ["per_group"]
    linked = e.get_entity("user", "alice")
    assert linked is not None and linked.links == ("acme",)
    members = e.get_entity("group", "acme")
    assert members is not None and members.links == ("alice",)
    # the same user alone: group rules and quotas do not apply, even though linked before
    d = e.decide({"model": "m", "user": user("alice")})
    assert d.allowed and d.checks == () and d.quotas == ()
    # with the group again: the group quota (1 per hour) is spent
    assert e.decide({"model": "m", "user": user("alice"), "group": {"id": "acme"}}).reason == "QUOTA_EXCEEDED"


def test_request_without_entities_sees_only_global_quotas() -> None:
    e = engine(
        """
        quota site limits requests to 2 per 1m for everyone
        quota each limits requests to 1 per 1m for each user
        rule all { enforce site, each }
        """
    )
    d = e.decide({"model": "m"})
    assert [q.name for q in d.quotas] == ["site"] and d.quotas[0].scope == "everyone"


def test_upsert_entity_sets_metadata_ahead_of_time() -> None:
    e = engine('rule s { when user.status == "suspended" deny "account suspended" }')
    e.upsert_entity("user", "bob", {"status": "suspended"}, groups=["acme"])
    d = e.decide({"model": "m", "user": {"id": "bob"}})
    assert d.message == "account suspended"
    got = e.get_entity("user", "bob")
    assert got is not None and got.links == ("acme",)
    with pytest.raises(ValueError, match="kind"):
        e.upsert_entity("team", "x", {})
    with pytest.raises(ValueError, match="id"):
        e.upsert_entity("user", "", {})


# -------------------------------------------------------------------- quotas


def test_request_quota_admits_exactly_the_limit_then_retry_after() -> None:
    clock = Clock()
    e = engine(
        """
        quota hourly limits requests to 3 per 1h for each user
        rule all { enforce hourly }
        """,
        clock,
    )
    for i in range(3):
        d = e.decide({"model": "m", "user": user("u")})
        assert d.allowed, i
        assert d.quotas[0].used == i + 1 and d.quotas[0].remaining == 2 - i
    d = e.decide({"model": "m", "user": user("u")})
    assert (d.allowed, d.reason) == (False, "QUOTA_EXCEEDED")
    q = d.quotas[0]
    assert q.exceeded and q.used == 3 and q.limit == 3
    assert 0 < q.retry_after <= 3600 + 60
    assert "hourly" in d.message
    # another user has their own counter
    assert e.decide({"model": "m", "user": user("v")}).allowed
    clock.advance(3600 + 61)  # a full window and one bucket later everything has expired
    assert e.decide({"model": "m", "user": user("u")}).allowed


def test_all_or_nothing_when_one_quota_is_exceeded() -> None:
    e = engine(
        """
        quota few limits requests to 1 per 1h for each user
        quota many limits requests to 100 per 1h for each user
        rule all { enforce many, few }
        """
    )
    assert e.decide({"model": "m", "user": user("u")}).allowed
    for _ in range(5):
        d = e.decide({"model": "m", "user": user("u")})
        assert not d.allowed
        assert [q.name for q in d.quotas if q.exceeded] == ["few"]
    # the denied attempts consumed nothing from `many`
    many = next(q for q in e.decide({"model": "m", "user": user("u")}).quotas if q.name == "many")
    assert many.used == 1


def test_dry_run_and_explain_consume_nothing() -> None:
    e = engine(
        """
        quota one limits requests to 1 per 1h for each user
        rule all { enforce one }
        """
    )
    for _ in range(3):
        assert e.decide({"model": "m", "user": user("u"), "dry_run": True}).allowed
        assert e.explain({"model": "m", "user": user("u")}).decision.allowed
    assert e.decide({"model": "m", "user": user("u")}).allowed
    assert not e.decide({"model": "m", "user": user("u")}).allowed


def test_explain_writes_no_entity() -> None:
    e = engine("rule all { allow }")
    e.explain({"model": "m", "user": user("ghost", tier="x")})
    assert e.get_entity("user", "ghost") is None


def test_unresolved_limit_fails_closed_and_fallback_and_percent() -> None:
    e = engine(
        """
        quota credits limits cost to group.monthly_credits per month for each group
        quota share limits cost to 10% of group.monthly_credits per month for each user in group
        quota soft limits requests to group.rpm or 2 per 1m for each group
        rule g { when group.id exists enforce credits, share, soft }
        """
    )
    d = e.decide({"model": "m", "user": user("u"), "group": {"id": "nocredits"}})
    assert (d.allowed, d.reason) == (False, "QUOTA_UNRESOLVED")
    assert "credits" in d.message
    g = {"id": "acme", "metadata": {"monthly_credits": 100}}
    d = e.decide({"model": "m", "user": user("u"), "group": g, "estimate": {"cost_usd": 4}})
    assert d.allowed
    limits = {q.name: q.limit for q in d.quotas}
    assert limits == {"credits": 100, "share": 10, "soft": 2}
    d = e.decide({"model": "m", "user": user("u"), "group": g, "estimate": {"cost_usd": 7}})
    assert d.reason == "QUOTA_EXCEEDED"  # 4 + 7 > 10% of 100
    assert [q.name for q in d.quotas if q.exceeded] == ["share"]


def test_zero_estimate_admits_while_used_below_limit() -> None:
    e = engine(
        """
        quota tok limits tokens to 100 per 1h for each user
        rule all { enforce tok }
        """
    )
    d = e.decide({"model": "m", "user": user("u")})
    assert d.allowed
    e.report({"request_id": "r1", "decision_id": d.decision_id, "user": user("u"), "output_tokens": 150})
    d = e.decide({"model": "m", "user": user("u")})
    assert d.reason == "QUOTA_EXCEEDED" and d.quotas[0].used == 150


def test_report_replaces_the_reservation_and_is_idempotent() -> None:
    e = engine(
        """
        quota tok limits tokens to 1000 per 1d for each user
        rule all { enforce tok }
        """
    )
    d = e.decide({"model": "m", "user": user("u"), "estimate": {"input_tokens": 100, "output_tokens": 400}})
    assert d.quotas[0].used == 500
    ack = e.report(
        {"request_id": "r1", "decision_id": d.decision_id, "user": user("u"),
         "input_tokens": 100, "output_tokens": 50}
    )
    assert ack.outcome == "settled" and not ack.duplicate
    peek = e.explain({"model": "m", "user": user("u")}).decision.quotas[0]
    assert peek.used == 150
    again = e.report(
        {"request_id": "r1", "decision_id": d.decision_id, "user": user("u"),
         "input_tokens": 100, "output_tokens": 50}
    )
    assert again.duplicate and again.outcome == "duplicate"
    assert e.explain({"model": "m", "user": user("u")}).decision.quotas[0].used == 150


def test_report_without_decision_adds_tokens_but_not_requests() -> None:
    e = engine(
        """
        quota tok limits tokens to 1000 per 1d for each user
        quota req limits requests to 10 per 1d for each user
        rule all { enforce tok, req }
        """
    )
    ack = e.report({"request_id": "r1", "user": user("u"), "input_tokens": 30, "output_tokens": 70})
    assert ack.outcome == "added"
    used = {q.name: q.used for q in e.explain({"model": "m", "user": user("u")}).decision.quotas}
    assert used == {"tok": 100, "req": 0}


def test_calendar_month_resets_at_the_boundary() -> None:
    clock = Clock(1_769_903_940.0)  # 2026-01-31T23:59:00Z
    e = engine(
        """
        quota monthly limits requests to 1 per month for each user
        rule all { enforce monthly }
        """,
        clock,
    )
    assert e.decide({"model": "m", "user": user("u")}).allowed
    d = e.decide({"model": "m", "user": user("u")})
    assert not d.allowed
    assert d.quotas[0].retry_after == pytest.approx(60, abs=1)
    assert d.quotas[0].resets_at == pytest.approx(1_769_904_000.0)  # 2026-02-01T00:00:00Z
    clock.advance(61)
    assert e.decide({"model": "m", "user": user("u")}).allowed


def test_per_model_scope_counts_the_served_model() -> None:
    e = engine(
        """
        quota rpm limits requests to 1 per 1m for each user and model
        rule r { route "mini" if request.model == "big" }
        rule all { enforce rpm }
        """
    )
    d = e.decide({"user": user("u"), "model": "big"})
    assert d.allowed and d.quotas[0].scope == "user+model" and d.quotas[0].key.endswith("+m=mini")
    assert not e.decide({"user": user("u"), "model": "mini"}).allowed  # same served model
    assert e.decide({"user": user("u"), "model": "other"}).allowed


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"model": "m", "user": {"id": ""}}, "user.id"),
        ({"model": "m", "user": {"id": "x" * 257}}, "user.id"),
        ({"model": "m", "group": {"id": "g", "metadata": "nope"}}, "group.metadata"),
        ({"model": "m", "user": {"id": "u", "metadata": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}}}, "user.metadata"),
        ({"model": "m", "user": {"id": "u", "metadata": {"blob": "x" * 70_000}}}, "user.metadata"),
        ({"model": "m", "user": {"id": "u"}, "estimate": {"output_tokens": -1}}, "estimate.output_tokens"),
        ({"model": "m", "user": {"id": "u"}, "estimate": {"cost_usd": float("nan")}}, "estimate.cost_usd"),
        ({"user": {"id": "u"}, "model": 5}, "model"),
        ({"model": "m", "user": {"id": "u"}, "colour": "red"}, "colour"),
        ({"user": {"id": "u"}}, "model"),
        ({"user": {"id": "u"}, "model": ""}, "model"),
        ({"model": "m", "user": {"id": "u"}, "attributes": {"k": 1}}, "attributes.k"),
    ],
)
def test_bad_requests_name_the_field_and_consume_nothing(request_: dict[str, object], field: str) -> None:
    e = engine(
        """
        quota one limits requests to 1 per 1h for each user
        rule all { enforce one }
        """
    )
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        e.decide(request_)
    assert e.decide({"model": "m", "user": {"id": "u"}}).allowed  # the bad call took nothing
    assert e.get_entity("user", "x" * 10) is None


def test_bad_reports_name_the_field() -> None:
    e = engine("rule all { allow }")
    with pytest.raises(ValueError, match="request_id"):
        e.report({"user": {"id": "u"}})
    with pytest.raises(ValueError, match="cost_usd"):
        e.report({"request_id": "r", "cost_usd": float("inf")})
    with pytest.raises(ValueError, match="input_tokens"):
        e.report({"request_id": "r", "input_tokens": -5})


# -------------------------------------------------------------------- reload


def test_reload_swaps_and_a_broken_file_keeps_the_old_rules(tmp_path: Path) -> None:
    rules = tmp_path / "r.rules"
    rules.write_text('rule a { deny "first" }\n')
    e = Engine.from_path(rules)
    v1 = e.ruleset.version
    assert e.decide({"model": "m"}).message == "first"
    rules.write_text('rule a { deny "second" }\n')
    assert e.reload().version != v1
    assert e.decide({"model": "m"}).message == "second"
    rules.write_text('rule a { deny "unterminated }\n')
    with pytest.raises(RulesError) as info:
        e.reload()
    assert info.value.errors and info.value.errors[0].line == 1
    assert e.decide({"model": "m"}).message == "second"
