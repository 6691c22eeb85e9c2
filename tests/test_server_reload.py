"""Hot reload: a changed file is swapped in, a broken one never replaces the rules in force."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_harness import free_user, serving, write_rules

from tollway.policy.engine import Engine
from tollway.server.metrics import Metrics
from tollway.server.reload import Reloader, fingerprint
from tollway.v1 import tollway_pb2 as pb

GOOD_V2 = """
default deny "closed for maintenance"
rule pros { when user.tier == "pro" allow }
"""

BROKEN = """
default allow
rule oops {
    when user.tier == "free"
    enforce no_such_quota
}
"""


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def _touch(path: Path, text: str) -> None:
    """Write and make sure the mtime moves even on coarse-grained filesystems."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def _reloader(engine: Engine, path: Path) -> tuple[Reloader, Metrics]:
    metrics = Metrics()
    metrics.ruleset_loaded(engine.ruleset)
    return Reloader(engine, path, metrics, interval=0), metrics


def test_changed_file_is_swapped_in(tmp_path: Path) -> None:
    path = write_rules(tmp_path)
    engine = Engine.from_path(path)
    old = engine.ruleset.version

    async def scenario() -> None:
        reloader, metrics = _reloader(engine, path)
        assert await reloader.poll_once() is None  # nothing changed yet
        _touch(path, GOOD_V2)
        assert await reloader.poll_once() is True
        assert engine.ruleset.version != old
        assert _value(metrics, "tollway_ruleset_info", version=engine.ruleset.version) == 1
        assert _value(metrics, "tollway_ruleset_info", version=old) is None
        assert _value(metrics, "tollway_ruleset_rules") == 1
        assert _value(metrics, "tollway_ruleset_reloads_total", result="success") == 1
        assert await reloader.poll_once() is None

    asyncio.run(scenario())
    d = engine.decide({"user": {"id": "u", "metadata": {"tier": "free"}}, "model": "m"})
    assert d.reason == "DEFAULT_DENY" and d.ruleset_version == engine.ruleset.version
    engine.close()


def test_broken_file_keeps_the_old_rules_and_logs_every_diagnostic(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_rules(tmp_path)
    engine = Engine.from_path(path)
    old = engine.ruleset

    async def scenario() -> None:
        reloader, metrics = _reloader(engine, path)
        assert reloader.status.last.why == "start" and reloader.status.last.ok
        _touch(path, BROKEN)
        with caplog.at_level(logging.ERROR, logger="tollway.server.reload"):
            assert await reloader.poll_once() is False
        assert engine.ruleset is old
        failed = reloader.status.last  # what the dashboard shows: the diagnostics themselves
        assert not failed.ok and failed.why == "rules changed" and failed.version == old.version
        assert [(d.file, d.line) for d in failed.errors] == [(str(path), 5)]
        assert "no_such_quota" in failed.errors[0].message
        assert _value(metrics, "tollway_ruleset_reloads_total", result="error") == 1
        assert _value(metrics, "tollway_ruleset_reloads_total", result="success") == 0
        assert _value(metrics, "tollway_ruleset_info", version=old.version) == 1
        # the same broken file is not retried on every poll
        assert await reloader.poll_once() is None
        # fixing it is picked up
        _touch(path, GOOD_V2)
        assert await reloader.poll_once() is True
        assert engine.ruleset is not old
        fixed = reloader.status.last
        assert fixed.ok and fixed.version == engine.ruleset.version and fixed.errors == ()

    asyncio.run(scenario())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{path}:5:" in logged and "no_such_quota" in logged and "^" in logged
    engine.close()


def test_directory_of_rule_files(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    write_rules(rules, "default allow\n", "00-default.rules")
    write_rules(rules, 'rule a { when user.tier == "x" deny "a" }\n', "a.rules")
    engine = Engine.from_path(rules)
    first = fingerprint(rules)
    assert len(first) == 2

    async def scenario() -> None:
        reloader, _ = _reloader(engine, rules)
        write_rules(rules, 'rule b { when user.tier == "y" deny "b" }\n', "b.rules")
        assert await reloader.poll_once() is True
        assert {r.name for r in engine.ruleset.rules} == {"a", "b"}
        (rules / "notes.txt").write_text("not a rule file")
        assert await reloader.poll_once() is None
        (rules / "b.rules").unlink()
        assert await reloader.poll_once() is True
        assert {r.name for r in engine.ruleset.rules} == {"a"}

    asyncio.run(scenario())
    engine.close()


def test_a_deleted_file_is_an_error_not_an_empty_ruleset(tmp_path: Path) -> None:
    path = write_rules(tmp_path)
    engine = Engine.from_path(path)
    old = engine.ruleset

    async def scenario() -> None:
        reloader, metrics = _reloader(engine, path)
        path.unlink()
        assert await reloader.poll_once() is False
        assert engine.ruleset is old
        assert [d.message for d in reloader.status.last.errors] == ["no such file"]
        assert _value(metrics, "tollway_ruleset_reloads_total", result="error") == 1

    asyncio.run(scenario())
    engine.close()


def test_running_server_answers_with_the_new_rules(tmp_path: Path) -> None:
    path = write_rules(tmp_path)
    with serving(path) as (stub, server, _):
        before = stub.Decide(pb.DecideRequest(user=free_user("u"), model="m"))
        assert before.allowed
        metrics = Metrics()
        reloader = Reloader(server.engine, path, metrics, interval=0)
        _touch(path, GOOD_V2)
        assert server.run(reloader.poll_once()) is True
        after = stub.Decide(pb.DecideRequest(user=free_user("u"), model="m"))
        assert not after.allowed and after.reason == pb.DEFAULT_DENY
        assert after.ruleset_version != before.ruleset_version


def test_the_watch_sees_exactly_the_files_a_reload_reads(tmp_path: Path) -> None:
    (tmp_path / "a.rules").write_text("rule a { allow }\n")
    before = fingerprint(tmp_path)
    # an editor's lock or swap file is not part of the ruleset: no reload for it
    (tmp_path / ".#a.rules").write_text("half-typed {")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.rules").write_text("rule x {")
    assert fingerprint(tmp_path) == before
    (tmp_path / "b.rules").write_text("rule b { allow }\n")
    assert [Path(name).name for name, _, _ in fingerprint(tmp_path)] == ["a.rules", "b.rules"]
