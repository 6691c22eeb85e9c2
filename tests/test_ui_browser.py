"""The dashboard in a real browser: Playwright driving the system's chromium.

One browser for the module and one server (gRPC and HTTP on one loop, as ``tollway
serve`` runs them), seeded through the gRPC API. No browser is ever downloaded: the
tests use ``/usr/bin/chromium`` (``TOLLWAY_CHROMIUM`` names another) and are skipped
without it, or fail when ``CI`` is set. Screenshots of every page are written under the
pytest temporary directory (``.../ui-screenshots/``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from server_harness import HttpPort, ServerThread, free_user, http_serving

from tollway import Engine
from tollway.server.auth import Authenticator, new_token, token_block
from tollway.server.ui.render import usd
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("TOLLWAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]

RULES = """
default allow

quota free_hourly limits requests to 100 per 1h for each user
quota team_cost   limits cost to 50 per 1d for each group

rule free_tier {
    when user.tier == "free"
    enforce free_hourly
    route "openai/gpt-4.1-mini" if request.model == "openai/gpt-5"
}

rule teams {
    when group.id exists
    enforce team_cost
}
"""

# (user, group, requests, cost of each, tokens of each); "heavy" spends most in all,
# "chatty" makes the most requests.
USERS = [
    ("heavy", "acme", 3, 2.5, 4000),
    ("chatty", "acme", 9, 0.01, 300),
    ("middle", "initech", 5, 0.2, 1200),
    ("quiet", "initech", 1, 0.05, 100),
    ("newbie", "", 2, 0.3, 800),
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    if shutil.which(CHROMIUM) is None:
        _unavailable(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


# "middle" also worked ten days ago: OLD_REQUESTS requests costing OLD_COST each.
OLD_REQUESTS, OLD_COST = 2, 0.5
DAYS_AGO = 10


class Clock:
    """The engine's clock: now, or ``behind`` seconds before it while old usage is seeded."""

    def __init__(self) -> None:
        self.behind = 0.0

    def __call__(self) -> float:
        return time.time() - self.behind


@dataclass
class Served:
    http: HttpPort
    engine: Engine

    def url(self, path: str) -> str:
        return self.http.url(path)


def _seed(stub: pb_grpc.TollwayStub, rows: list[tuple[str, str, int, float, int]],
          tag: str) -> None:
    for user, group, count, cost, tokens in rows:
        for i in range(count):
            rid = f"{tag}-{user}-{i}"
            entity = free_user(user) if user != "heavy" else pb.Entity(id=user)
            team = pb.Entity(id=group) if group else None
            d = stub.Decide(pb.DecideRequest(
                request_id=rid, user=entity, group=team, model="openai/gpt-5"))
            assert d.allowed
            stub.Report(pb.UsageReport(
                request_id=rid, decision_id=d.decision_id, user=pb.Entity(id=user),
                group=team, model=d.model, input_tokens=tokens - 100, output_tokens=100,
                cost_usd=cost))


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    """gRPC and HTTP over one engine, usage seeded with Decide and Report over gRPC:
    ``middle``'s older usage ten days ago, everything else now."""
    clock = Clock()
    engine = Engine.from_text(RULES, clock=clock)
    grpc_server = ServerThread(engine)
    address = grpc_server.start()
    try:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.TollwayStub(channel)
            clock.behind = DAYS_AGO * 86400.0
            _seed(stub, [("middle", "initech", OLD_REQUESTS, OLD_COST, 1000)], "old")
            clock.behind = 0.0
            _seed(stub, USERS, "now")
        assert engine.flush_usage()
        with http_serving(engine, loop=grpc_server) as http:
            yield Served(http, engine)
    finally:
        grpc_server.stop()
        engine.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui-screenshots")


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page with JavaScript off: the dashboard needs none."""
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1200, "height": 900})
    yield context.new_page()
    context.close()


def _column(page: Any, field: str) -> list[float]:
    cells = page.locator(f"#usage-table tbody td:nth-child({_index(page, field)})")
    return [float(c.get_attribute("data-value")) for c in cells.all()]


def _index(page: Any, field: str) -> int:
    headers = page.locator("#usage-table thead th").all()
    for i, h in enumerate(headers, 1):
        if h.get_attribute("data-field") == field:
            return i
    raise AssertionError(f"no column {field}")


def _ids(page: Any) -> list[str]:
    return page.locator("#usage-table tbody th a").all_inner_texts()


def test_the_users_table_is_sorted_by_cost_and_a_header_click_resorts_it(
    server: Served, page: Any, shots: Path
) -> None:
    page.goto(server.url("/ui/users"))
    page.screenshot(path=str(shots / "users.png"), full_page=True)
    assert _ids(page)[0] == "heavy"
    costs = _column(page, "total_cost")
    assert costs == sorted(costs, reverse=True) and len(costs) == len(USERS)
    page.get_by_role("link", name="Requests").click()
    page.wait_for_url("**sort=-request_count**")
    assert _ids(page)[0] == "chatty"
    requests = _column(page, "request_count")
    assert requests == sorted(requests, reverse=True)
    header = page.locator('#usage-table th[data-field="request_count"]')
    assert header.get_attribute("aria-sort") == "descending"
    page.get_by_role("link", name="Requests").click()  # again: the other way round
    page.wait_for_url("**sort=request_count**")
    assert _ids(page)[0] == "quiet" and header.get_attribute("aria-sort") == "ascending"


def test_the_search_box_filters(server: Served, page: Any) -> None:
    page.goto(server.url("/ui/users"))
    page.get_by_label("Search ids").fill("I")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**search=I**")
    assert sorted(_ids(page)) == ["middle", "newbie", "quiet"]  # case-insensitive
    assert page.get_by_label("Search ids").input_value() == "I"


def test_a_detail_page_shows_the_right_totals(
    server: Served, page: Any, shots: Path
) -> None:
    page.goto(server.url("/ui/users"))
    page.get_by_role("link", name="middle", exact=True).click()
    page.wait_for_url("**/ui/users/middle**")
    page.screenshot(path=str(shots / "detail.png"), full_page=True)
    _, _, count, cost, tokens = USERS[2]
    requests = count + OLD_REQUESTS
    assert page.locator("#card-requests").inner_text() == str(requests)
    assert page.locator("#card-tokens").inner_text() == f"{count * tokens + OLD_REQUESTS * 1000:,}"
    assert page.locator("#card-cost").inner_text() == usd(count * cost + OLD_REQUESTS * OLD_COST)
    assert page.locator("table.reports tbody tr").count() == requests
    # the chart, over the listing's period (all time): one group of marks per day
    chart = page.locator("#usage-chart")
    first_seen = time.time() - DAYS_AGO * 86400
    series = server.engine.usage_series("user", "middle", {
        "metric": "cost", "step": "1d", "start": first_seen - 60, "end": time.time()})
    assert series is not None and len(series.points) == DAYS_AGO + 1
    assert chart.locator("g.point").count() == len(series.points)
    assert int(chart.get_attribute("data-points")) == len(series.points)
    assert page.locator("#period-totals strong").first.inner_text() == usd(
        count * cost + OLD_REQUESTS * OLD_COST)
    # the last 7 days, hour by hour: only the recent usage
    page.get_by_label("Show").select_option("7d")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**period=7d**")
    hours = page.locator("#usage-chart g.point").count()
    assert 7 * 24 <= hours <= 7 * 24 + 1
    assert page.locator("#period-totals strong").first.inner_text() == usd(count * cost)
    page.screenshot(path=str(shots / "detail-7d.png"), full_page=True)
    quotas = page.locator("table.quotas tbody th").all_inner_texts()
    assert quotas == ["free_hourly", "team_cost"]
    page.get_by_role("link", name="initech").first.click()
    page.wait_for_url("**/ui/groups/initech**")
    assert sorted(page.locator("ul.links a").all_inner_texts()) == ["middle", "quiet"]
    page.screenshot(path=str(shots / "group.png"), full_page=True)


def test_the_period_picker_changes_the_amounts(server: Served, page: Any) -> None:
    page.goto(server.url("/ui/users?sort=-total_cost"))
    row = page.locator("#usage-table tbody tr", has=page.get_by_role("link", name="middle"))
    _, _, count, cost, _ = USERS[2]
    lifetime = count * cost + OLD_REQUESTS * OLD_COST
    assert row.locator("td").nth(2).inner_text() == usd(lifetime)
    assert row.locator("td").nth(0).inner_text() == str(count + OLD_REQUESTS)
    page.get_by_label("Show").select_option("1d")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**period=1d**")
    assert row.locator("td").nth(2).inner_text() == usd(count * cost)
    assert row.locator("td").nth(0).inner_text() == str(count)
    assert "amounts within" in page.locator("#summary").inner_text()
    # a custom period around the old work shows only it, and only who worked then
    start = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - (DAYS_AGO + 1) * 86400))
    end = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - (DAYS_AGO - 1) * 86400))
    page.get_by_label("Show").select_option("custom")
    page.get_by_label("from", exact=True).fill(start)
    page.get_by_label("to", exact=True).fill(end)
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**period=custom**")
    assert _ids(page) == ["middle"]
    assert row.locator("td").nth(2).inner_text() == usd(OLD_REQUESTS * OLD_COST)


def test_the_spikes_page_lists_a_spiking_user(
    server: Served, page: Any, shots: Path
) -> None:
    page.goto(server.url("/ui/users"))
    page.get_by_role("link", name="Spikes").click()
    page.wait_for_url("**/ui/spikes")
    page.screenshot(path=str(shots / "spikes.png"), full_page=True)
    table = page.locator("#spikes-table")
    # heavy spent $7.50 this hour and nothing before: over the $1 minimum, a new spender
    heavy = table.locator("tbody tr", has=page.get_by_role("link", name="heavy"))
    assert heavy.locator("td").nth(0).inner_text() == usd(3 * 2.5)
    assert heavy.locator("td").nth(2).inner_text() == "new"
    assert "quiet" not in table.inner_text()  # $0.05: under the minimum
    heavy.get_by_role("link", name="heavy").click()
    page.wait_for_url("**/ui/users/heavy**")
    page.go_back()
    page.get_by_label("Minimum").fill("100")
    page.get_by_role("button", name="Look").click()
    page.wait_for_url("**min=100**")
    assert "Nobody is spiking." in table.inner_text()


def test_the_explain_box_shows_the_routed_model_of_a_free_user(
    server: Served, page: Any, shots: Path
) -> None:
    page.goto(server.url("/ui/rules"))
    page.get_by_label("as JSON").fill(
        '{"user": {"id": "someone", "metadata": {"tier": "free"}}, "model": "openai/gpt-5"}'
    )
    page.get_by_role("button", name="Explain").click()
    page.wait_for_url("**/ui/rules/explain**")
    assert page.locator("dd.model").inner_text() == "openai/gpt-4.1-mini (routed)"
    assert "free_tier" in page.locator("table.trace").inner_text()
    page.screenshot(path=str(shots / "rules.png"), full_page=True)


def test_every_page_fits_a_phone_and_prints_without_navigation(
    server: Served, browser: Any, shots: Path
) -> None:
    context = browser.new_context(java_script_enabled=False, viewport={"width": 375, "height": 740})
    phone = context.new_page()
    try:
        for name, path in PAGES:
            phone.goto(server.url(path))
            wide = phone.evaluate("document.documentElement.scrollWidth")
            assert wide <= 375, f"{path} is {wide}px wide on a 375px screen"
            phone.screenshot(path=str(shots / f"phone-{name}.png"), full_page=True)
        phone.emulate_media(media="print")
        phone.goto(server.url("/ui/users/heavy"))
        assert not phone.locator("header.top").is_visible()
        assert phone.locator("#card-cost").is_visible()
    finally:
        context.close()


def test_signing_in_and_out_in_the_browser(
    server: Served, browser: Any, tmp_path: Path
) -> None:
    """With tokens on, a page sends the browser to sign in and back; the cookie it keeps
    is HttpOnly and SameSite=Strict; signing out ends it."""
    admin = new_token()
    path = tmp_path / "tokens.toml"
    path.write_text(token_block("dash", ["admin"], admin))
    with http_serving(server.engine, auth=Authenticator(path)) as guarded:
        context = browser.new_context(java_script_enabled=False)
        try:
            tab = context.new_page()
            tab.goto(guarded.url("/ui/users?sort=-request_count"))
            assert tab.url.startswith(guarded.url("/ui/login?next="))
            tab.get_by_label("Token").fill(admin)
            tab.get_by_role("button", name="Sign in").click()
            tab.wait_for_url(guarded.url("/ui/users?sort=-request_count"))
            assert _ids(tab)[0] == "chatty"
            [cookie] = context.cookies()
            assert cookie["name"] == "tollway_session" and cookie["httpOnly"]
            assert cookie["sameSite"] == "Strict" and cookie["path"] == "/ui/"
            tab.get_by_role("button", name="Sign out").click()
            tab.wait_for_url(guarded.url("/ui/login"))
            assert context.cookies() == []
            tab.goto(guarded.url("/ui/rules"))
            assert tab.url.startswith(guarded.url("/ui/login?next="))
        finally:
            context.close()


PAGES = [("users", "/ui/users"), ("groups", "/ui/groups"), ("detail", "/ui/users/middle"),
         ("group", "/ui/groups/acme"), ("spikes", "/ui/spikes"), ("rules", "/ui/rules"),
         ("login", "/ui/login")]


def test_no_page_has_serious_accessibility_violations(server: Served, browser: Any) -> None:
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    context = browser.new_context(viewport={"width": 1200, "height": 900})  # axe is a script
    try:
        found = {}
        for name, path in PAGES:
            tab = context.new_page()
            tab.goto(server.url(path))
            results = axe.run(tab)
            found[name] = [
                (v["id"], v["impact"], len(v["nodes"]))
                for v in results.response["violations"]
                if v["impact"] in ("serious", "critical")
            ]
            assert results.response["passes"], "axe-core did not run"
            tab.close()
        assert found == {name: [] for name, _ in PAGES}
    finally:
        context.close()
