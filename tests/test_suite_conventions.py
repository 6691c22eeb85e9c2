"""Conventions of the test suite that a reviewer would otherwise have to remember."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

_OWN_BACKEND = re.compile(r'params=\[\s*"memory"|getfixturevalue\(\s*"redis_(url|prefix)"\s*\)')


def test_memory_and_redis_variants_come_from_the_backend_fixture() -> None:
    """One place (conftest's ``backend``) chooses memory or Redis and marks the Redis run."""
    offenders = [
        f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}"
        for path in sorted(TESTS.glob("*.py")) if path.name != "conftest.py"
        for text in [path.read_text(encoding="utf-8")]
        for m in _OWN_BACKEND.finditer(text)
    ]
    assert not offenders, f"use the backend fixture (tests/conftest.py) instead: {offenders}"


def test_tests_that_use_redis_are_marked(request: pytest.FixtureRequest) -> None:
    """The collection hook marks every test whose fixtures reach a Redis."""
    session = request.session
    unmarked = [
        item.nodeid for item in session.items
        if {"redis_url", "redis_prefix", "redis_server", "redis_server_factory"}
        & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("redis") is None
    ]
    assert not unmarked
