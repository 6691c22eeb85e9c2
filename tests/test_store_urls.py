"""Store URLs: every form is read in one place (``parse_store_url``); bad ones name the problem."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.policy.stores import StoreAddress, parse_store_url


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("memory", StoreAddress("memory", "memory")),
        ("redis://127.0.0.1:6379/0", StoreAddress("redis", "redis://127.0.0.1:6379/0")),
        ("rediss://:pw@cache:6380/2", StoreAddress("redis", "rediss://:pw@cache:6380/2")),
        ("unix:///run/redis.sock?db=1", StoreAddress("redis", "unix:///run/redis.sock?db=1")),
        (
            "redis+sentinel://s1:26380,s2,[::1]:26381/main/3",
            StoreAddress(
                "sentinel", "redis+sentinel://s1:26380,s2,[::1]:26381/main/3",
                (("s1", 26380), ("s2", 26379), ("::1", 26381)), "main", 3,
            ),
        ),
        (
            "redis+sentinel://app:s%40cret@10.0.0.5:26379/my%20master",
            StoreAddress(
                "sentinel", "redis+sentinel://app:s%40cret@10.0.0.5:26379/my%20master",
                (("10.0.0.5", 26379),), "my master", 0, "app", "s@cret",
            ),
        ),
        (
            "redis+cluster://n1:7000,n2,[::1]:7001",
            StoreAddress(
                "cluster", "redis+cluster://n1:7000,n2,[::1]:7001",
                (("n1", 7000), ("n2", 6379), ("::1", 7001)),
            ),
        ),
        (
            "redis+cluster://:pw@n1:7000/team%20a:",
            StoreAddress(
                "cluster", "redis+cluster://:pw@n1:7000/team%20a:", (("n1", 7000),),
                password="pw", prefix="team a:",
            ),
        ),
        (
            "redis+cluster://n1:7000/",
            StoreAddress("cluster", "redis+cluster://n1:7000/", (("n1", 7000),)),
        ),
    ],
)
def test_every_form_is_read(url: str, address: StoreAddress) -> None:
    assert parse_store_url(url) == address


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "is not a store"),
        ("mongodb://x", "is not a store"),
        ("Memory", "is not a store"),
        ("redis+sentinel://", "at least one sentinel"),
        ("redis+sentinel://h:1", "SERVICE"),
        ("redis+sentinel://h:1/", "SERVICE"),
        ("redis+sentinel://h:1/svc/0/extra", "SERVICE"),
        ("redis+sentinel://h:1/svc/zero", "not a number"),
        ("redis+sentinel://h:port/svc", "is not a port"),
        ("redis+sentinel://h:0/svc", "is not a port"),
        ("redis+sentinel://h:70000/svc", "is not a port"),
        ("redis+sentinel://:1/svc", "host is missing"),
        ("redis+cluster://", "at least one node"),
        ("redis+cluster:///prefix", "at least one node"),
        ("redis+cluster://h:port", "is not a port"),
        ("redis+cluster://h:1,:2", "host is missing"),
    ],
)
def test_a_bad_url_is_refused_naming_its_problem(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        parse_store_url(url)
    assert str(caught.value).startswith("store: ")


@given(st.text(max_size=60).map(lambda s: "redis+sentinel://" + s))
def test_any_sentinel_url_is_read_or_refused_with_a_value_error(url: str) -> None:
    try:
        address = parse_store_url(url)
    except ValueError as exc:
        assert str(exc).startswith("store: ")
    else:
        assert address.kind == "sentinel" and address.nodes and address.service
        assert all(0 < port < 65536 for _, port in address.nodes)


@given(st.text(max_size=60).map(lambda s: "redis+cluster://" + s))
def test_any_cluster_url_is_read_or_refused_with_a_value_error(url: str) -> None:
    try:
        address = parse_store_url(url)
    except ValueError as exc:
        assert str(exc).startswith("store: ")
    else:
        assert address.kind == "cluster" and address.nodes
        assert all(0 < port < 65536 for _, port in address.nodes)
