"""The dashboard's pages over a real HTTP socket, without a browser: what each page says,
what it refuses, how it escapes, how signing in works. The browser tests
(test_ui_browser.py) click through the same pages in chromium."""

from __future__ import annotations

import html
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from conftest import RedisServer
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import escape
from server_harness import HttpPort, LoopThread, http_serving, write_rules

from tollway import Engine
from tollway.policy.validate import FieldError
from tollway.server.auth import Authenticator, new_token, token_block
from tollway.server.http import build_app, start_http
from tollway.server.http_ops import Readiness
from tollway.server.metrics import Metrics
from tollway.server.reload import Reloader
from tollway.server.ui.chart import HEIGHT, WIDTH, Chart, nice_ceiling
from tollway.server.ui.period import Period
from tollway.server.ui.render import usd
from tollway.server.ui.session import COOKIE, safe_next

RULES = """
default allow

quota free_hourly limits requests to 100 per 1h for each user
quota free_tokens limits tokens to 200_000 per 1d for each user
quota team_cost   limits cost to 50 per 1d for each group

rule free_tier {
    when user.tier == "free"
    enforce free_hourly, free_tokens
    route "openai/gpt-4.1-mini" if request.model == "openai/gpt-5"
}

rule teams {
    when group.id exists
    enforce team_cost
}
"""

HOSTILE = '<b>x</b>/"&\'?#é'


def seed(engine: Engine) -> None:
    """Twelve users (``u00``…): ``u<i>`` made ``i + 1`` requests costing $0.01·(12 - i)
    in all, so cost and request counts sort in opposite orders; and a user with a hostile
    id who spent least."""
    n = 0
    for i in range(12):
        for _ in range(i + 1):
            user = {"id": f"u{i:02d}", "metadata": {"tier": "free" if i % 2 else "pro"}}
            group = {"id": "acme" if i % 3 else "initech"}
            d = engine.decide({"user": user, "group": group, "model": "openai/gpt-5"})
            engine.report({
                "request_id": f"r{n}", "decision_id": d.decision_id, "user": user,
                "group": group, "model": d.model, "input_tokens": 100, "output_tokens": 10,
                "cost_usd": 0.01 * (12 - i) / (i + 1),
            })
            n += 1
    engine.report({"request_id": "hostile", "user": {"id": HOSTILE}, "model": "m",
                   "cost_usd": 0.001})
    assert engine.flush_usage()  # usage is written a moment after the reports


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    e = Engine.from_text(RULES)
    seed(e)
    yield e
    e.close()


@pytest.fixture(scope="module")
def port(engine: Engine) -> Iterator[HttpPort]:
    with http_serving(engine) as http:
        yield http


@dataclass
class Page:
    status: int
    headers: dict[str, str]
    text: str


def fetch(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> Page:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=10) as r:
            return Page(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        return Page(exc.code, {k.lower(): v for k, v in exc.headers.items()}, body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def rows(page: Page) -> list[tuple[str, str, list[float]]]:
    """(link, id as shown, numbers of the requests/tokens/cost cells) of a listing."""
    found = re.findall(
        r'<th scope="row" class="id"><a href="([^"]+)">([^<]*)</a></th>\s*'
        r'<td class="num" data-value="([^"]+)">[^<]*</td>\s*'
        r'<td class="num" data-value="([^"]+)">[^<]*</td>\s*'
        r'<td class="num" data-value="([^"]+)">',
        page.text,
    )
    return [(html.unescape(h), html.unescape(i), [float(a), float(b), float(c)])
            for h, i, a, b, c in found]


def form_post(url: str, fields: dict[str, str], origin: str | None) -> Page:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if origin is not None:
        headers["Origin"] = origin
    return fetch(url, urlencode(fields).encode(), headers)


# ------------------------------------------------------------------ pages


PAGES = ["/ui/users", "/ui/groups", "/ui/users/u03", "/ui/groups/acme", "/ui/rules",
         "/ui/login"]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_is_html_with_no_script_and_a_strict_policy(port: HttpPort, path: str) -> None:
    page = fetch(port.url(path))
    assert page.status == 200, page.text[:500]
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert page.headers["cache-control"] == "no-store"
    assert '<html lang="en">' in page.text and "<script" not in page.text.lower()


def test_the_start_page_and_the_stylesheet(port: HttpPort) -> None:
    start = fetch(port.url("/ui/"))
    assert start.status == 302 and start.headers["location"] == "/ui/users"
    css = fetch(port.url("/ui/static/tollway.css"))
    assert css.status == 200 and css.headers["content-type"].startswith("text/css")
    assert "@media print" in css.text and "max-width: 640px" in css.text
    missing = fetch(port.url("/ui/static/nothing.js"))
    assert missing.status == 404 and "no such file" in missing.text


def test_users_are_sorted_by_cost_then_as_asked(port: HttpPort) -> None:
    listed = rows(fetch(port.url("/ui/users?limit=100")))
    assert len(listed) == 13
    costs = [numbers[2] for _, _, numbers in listed]
    assert costs == sorted(costs, reverse=True) and listed[0][1] == "u00"
    by_requests = rows(fetch(port.url("/ui/users?sort=-request_count&limit=100")))
    assert [r[1] for r in by_requests[:3]] == ["u11", "u10", "u09"]
    ascending = rows(fetch(port.url("/ui/users?sort=request_count&limit=100")))
    assert [r[2][0] for r in ascending] == sorted(r[2][0] for r in ascending)


def test_a_header_links_to_the_other_direction_and_keeps_the_search(port: HttpPort) -> None:
    page = fetch(port.url("/ui/users?search=u0&sort=-total_cost"))
    cost = re.search(r'aria-sort="(\w+)" data-field="total_cost"><a href="([^"]+)"', page.text)
    assert cost is not None and cost[1] == "descending"
    assert "sort=total_cost" in html.unescape(cost[2]) and "search=u0" in html.unescape(cost[2])
    other = re.search(r'aria-sort="(\w+)" data-field="last_seen"><a href="([^"]+)"', page.text)
    assert other is not None and other[1] == "none" and "sort=-last_seen" in html.unescape(other[2])


def test_search_keeps_matching_ids_and_paging_walks_the_rest(port: HttpPort) -> None:
    found = rows(fetch(port.url("/ui/users?search=U1")))  # ASCII case-insensitive
    assert sorted(r[1] for r in found) == ["u10", "u11"]
    first = fetch(port.url("/ui/users?limit=5"))
    assert len(rows(first)) == 5 and "1\u20135 of 13 users" in first.text
    following = re.search(r'rel="next" href="([^"]+)"', first.text)
    assert following is not None
    second = fetch(port.url(html.unescape(following[1])))
    assert "6\u201310 of 13 users" in second.text
    assert not {r[1] for r in rows(first)} & {r[1] for r in rows(second)}


@pytest.mark.parametrize(("query", "named"), [
    ("sort=bogus", "sort"),
    ("limit=0", "limit"),
    ("period=2w", "period"),
    ("period=custom&start=2027-01-02T00:00&end=2027-01-01T00:00", "end"),
    ("period=custom&start=yesterday", "start"),
])
def test_bad_parameters_are_a_400_page_that_names_them(
    port: HttpPort, query: str, named: str
) -> None:
    page = fetch(port.url(f"/ui/users?{query}"))
    assert page.status == 400 and page.headers["content-type"].startswith("text/html")
    alert = re.search(r'<p class="error" role="alert">([^<]*)</p>', page.text)
    assert alert is not None and html.unescape(alert[1]).startswith(f"{named}:")


def test_an_unknown_id_is_a_404_page(port: HttpPort) -> None:
    page = fetch(port.url("/ui/users/nobody-at-all"))
    assert page.status == 404 and "nobody-at-all" in page.text
    assert page.headers["content-type"].startswith("text/html")


def test_hostile_ids_are_escaped_and_their_links_work(port: HttpPort) -> None:
    page = fetch(port.url("/ui/users?search=" + quote("<b>")))
    [(href, shown, _)] = rows(page)
    assert shown == HOSTILE and "<b>x</b>" not in page.text
    assert href.startswith("/ui/users/" + quote(HOSTILE, safe=""))
    detail = fetch(port.url(href))
    assert detail.status == 200 and str(escape(HOSTILE)) in detail.text
    assert "<b>x</b>" not in detail.text


def test_a_detail_page_shows_totals_models_quotas_and_reports(port: HttpPort) -> None:
    page = fetch(port.url("/ui/users/u03"))
    cards = dict(re.findall(r'id="card-(\w+)">([^<]*)<', page.text))
    assert cards == {"requests": "4", "tokens": "440", "cost": usd(0.09)}
    assert "openai/gpt-4.1-mini" in page.text and "100.0%" in page.text  # routed, one model
    quotas = re.findall(r'<tr>\s*<th scope="row">(\w+)</th><td>(\w+)</td>', page.text)
    assert dict(quotas) == {"free_hourly": "requests", "free_tokens": "tokens",
                            "team_cost": "cost"}
    assert page.text.count('<td><code>r') == 4  # its four reports
    assert 'href="/ui/groups/initech"' in page.text


def test_a_group_page_lists_its_members(port: HttpPort) -> None:
    page = fetch(port.url("/ui/groups/initech"))
    members = re.findall(r'<li><a href="/ui/users/(u\d+)">', page.text)
    assert members == ["u00", "u03", "u06", "u09"]


def test_usage_pages_do_not_need_redis_and_a_usage_database_down_is_a_503_page(
    redis_server: RedisServer,
) -> None:
    engine = Engine.from_text(RULES, store=redis_server.url)
    seed(engine)
    try:
        with http_serving(engine) as http:
            assert fetch(http.url("/ui/users/u03")).status == 200
            redis_server.kill()  # usage is read from the usage database, never from Redis
            for path in ("/ui/users", "/ui/users/u03", "/ui/groups/acme"):
                page = fetch(http.url(path))
                assert page.status == 200, (path, page.text[:300])
            # a detail page shows the usage, and says what it cannot read without the store
            detail = fetch(http.url("/ui/users/u03")).text
            assert 'id="card-requests">4<' in detail
            assert "quota counters are not shown: the counter store cannot be reached" in detail
            assert "<table class=\"quotas\">" not in detail
    finally:
        engine.close()
    down = Engine.from_text(RULES, usage_db="postgresql://tollway@127.0.0.1:1/x")
    try:
        with http_serving(down) as http:
            for path in ("/ui/users", "/ui/users/u03", "/ui/groups/acme"):
                page = fetch(http.url(path))
                assert page.status == 503, (path, page.text[:300])
                assert page.headers["content-type"].startswith("text/html")
                assert re.search(r'<p class="error" role="alert">[^<]*usage database unavailable', page.text)
            assert fetch(http.url("/ui/rules")).status == 200  # the rules need no database
    finally:
        down.close()


# ------------------------------------------------------------------ the explain box


FREE = '{"user": {"id": "u01", "metadata": {"tier": "free"}}, "model": "openai/gpt-5"}'


def test_the_explain_box_shows_the_decision_and_the_trace(port: HttpPort) -> None:
    origin = f"http://{port.address}"
    page = form_post(port.url("/ui/rules/explain"), {"request": FREE}, origin)
    assert page.status == 200
    model = re.search(r'<dd class="model"><code>([^<]+)</code>( \(routed\))?', page.text)
    assert model is not None and model[1] == "openai/gpt-4.1-mini" and model[2]
    assert re.search(r"Trace: [12] of 2 rules selected by the index", page.text)
    assert 'held: <code>user.tier == &#34;free&#34;</code>' in page.text
    assert str(escape(FREE)) in page.text  # the text is kept in the box


@pytest.mark.parametrize(("text", "says"), [
    ("{not json", "request: not valid JSON"),
    ("[1, 2]", "request: must be a JSON object"),
    ('{"user": {"id": ""}, "model": "m"}', "user"),
    ('{"user": {"id": "u"}}', "model"),
])
def test_the_explain_box_refuses_bad_requests_by_name(
    port: HttpPort, text: str, says: str
) -> None:
    page = form_post(port.url("/ui/rules/explain"), {"request": text},
                     f"http://{port.address}")
    assert page.status == 400
    error = re.search(r'id="explain-error">([^<]*)<', page.text)
    assert error is not None and says in html.unescape(error[1])


def test_the_explain_box_takes_posts_from_its_own_pages_only(port: HttpPort) -> None:
    url = port.url("/ui/rules/explain")
    assert form_post(url, {"request": FREE}, "http://evil.example").status == 403
    assert form_post(url, {"request": FREE}, "null").status == 403
    referer = {"Content-Type": "application/x-www-form-urlencoded",
               "Referer": "http://evil.example/ui/rules"}
    assert fetch(url, urlencode({"request": FREE}).encode(), referer).status == 403
    as_json = fetch(url, FREE.encode(), {"Content-Type": "application/json"})
    assert as_json.status == 415
    assert fetch(url).status == 405  # GET is not a way to explain


@settings(max_examples=80, deadline=None)
@given(st.one_of(
    st.binary(max_size=200),
    st.builds(lambda t: urlencode({"request": t}).encode(), st.text(max_size=200)),
    st.sampled_from([b"request=%ff", b"request=%c3%28", b"request", b"=&=&", b"request=%",
                     b"&".join([b"x=1"] * 70), b"request=" + b"%5B" * 5000]),
))
def test_any_form_body_is_explained_or_refused_by_name(port: HttpPort, body: bytes) -> None:
    page = fetch(port.url("/ui/rules/explain"), body, {
        "Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://{port.address}"})
    assert page.status in (200, 400), (page.status, page.text[:300])
    assert page.headers["content-type"].startswith("text/html")
    if page.status == 400:
        assert re.search(r'role="alert"[^>]*>[^<]+', page.text), page.text[-800:]


# ------------------------------------------------------------------ rules and reloads


def test_the_rules_page_shows_the_ruleset_in_force_and_the_failed_reload(
    tmp_path: Path,
) -> None:
    path = write_rules(tmp_path, "default allow\nrule  vip{when user.tier==\"vip\" allow}\n")
    engine = Engine.from_path(path)
    loop = LoopThread()
    reloader = Reloader(engine, path, Metrics(), interval=0)
    app = build_app(engine, Metrics(), Readiness(engine), reloads=reloader.status)
    http = loop.run(start_http("127.0.0.1:0", app))
    try:
        url = f"http://{http.address}/ui/rules"
        page = fetch(url)
        assert f'id="ruleset-version">{engine.ruleset.version}<' in page.text
        assert "rule vip {\n    when user.tier == &#34;vip&#34;\n    allow\n}" in page.text
        assert "Loaded" in page.text and "at start-up" in page.text
        path.write_text("default allow\nrule broken { enforce nothing_here }\n")
        assert loop.run(reloader.reload("SIGHUP")) is False
        page = fetch(url)
        result = re.search(r'id="reload-result" class="error">(.*?)</p>', page.text, re.S)
        assert result is not None and "Failed" in result[1] and "SIGHUP" in result[1]
        assert f"{path}:2:" in page.text and "nothing_here" in page.text
        # the source shown is still the ruleset in force, not the broken file
        [source] = re.findall(r'<pre class="source"[^>]*>(.*?)</pre>', page.text, re.S)
        assert "rule vip {" in source and "rule broken" not in source
    finally:
        loop.run(http.stop())
        loop.close()
        engine.close()


# ------------------------------------------------------------------ signing in


@dataclass(frozen=True)
class Guarded:
    """A port that asks for tokens: its base URL and a token of each kind."""

    base: str
    admin: str
    metrics: str


@pytest.fixture(scope="module")
def guarded(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    admin, metrics = new_token(), new_token()
    path = tmp_path_factory.mktemp("auth") / "tokens.toml"
    path.write_text(token_block("dash", ["admin"], admin) + token_block("prom", ["metrics"], metrics))
    with http_serving(engine, auth=Authenticator(path)) as http:
        yield Guarded(f"http://{http.address}", admin, metrics)


def test_signing_in_sets_a_strict_session_cookie(guarded: Guarded) -> None:
    base = guarded.base
    form = fetch(base + "/ui/login?next=/ui/groups")
    assert 'type="password"' in form.text and 'value="/ui/groups"' in form.text
    page = form_post(base + "/ui/login", {"token": guarded.admin, "next": "/ui/groups"}, base)
    assert page.status == 303 and page.headers["location"] == "/ui/groups"
    cookie = SimpleCookie(page.headers["set-cookie"])[COOKIE]
    assert cookie.value == guarded.admin and cookie["httponly"] and cookie["path"] == "/ui/"
    assert cookie["samesite"] == "Strict" and not cookie["secure"]  # plain HTTP here
    assert guarded.admin not in page.headers["location"]
    signed_in = fetch(base + "/ui/groups", headers={"Cookie": f"{COOKIE}={guarded.admin}"})
    assert signed_in.status == 200 and "Sign out" in signed_in.text


@pytest.mark.parametrize(("token", "says"), [
    ("tw_nobody", "Unknown token."),
    ("metrics", "it needs the admin role"),
    ("", "Unknown token."),
    ("tw_\u0000admin", "Unknown token."),
    ("x" * 600, "Unknown token."),
])
def test_a_refused_token_sets_no_cookie(guarded: Guarded, token: str, says: str) -> None:
    token = guarded.metrics if token == "metrics" else token
    page = form_post(guarded.base + "/ui/login", {"token": token}, guarded.base)
    assert page.status == 401 and says in html.unescape(page.text)
    assert "set-cookie" not in page.headers


def test_sign_in_and_out_forms_come_from_the_dashboard_only(guarded: Guarded) -> None:
    base = guarded.base
    evil = form_post(base + "/ui/login", {"token": guarded.admin}, "http://evil.example")
    assert evil.status == 403 and "set-cookie" not in evil.headers
    out = form_post(base + "/ui/logout", {}, base)
    assert out.status == 303 and out.headers["location"] == "/ui/login"
    assert 'tollway_session=""' in out.headers["set-cookie"]
    assert form_post(base + "/ui/logout", {}, "http://evil.example").status == 403


def test_without_tokens_the_login_form_sends_you_on(port: HttpPort) -> None:
    page = fetch(port.url("/ui/login"))
    assert "does not ask for tokens" in page.text and 'type="password"' not in page.text
    post = form_post(port.url("/ui/login"), {"token": "x"}, f"http://{port.address}")
    assert post.status == 303 and "set-cookie" not in post.headers


@given(st.text(max_size=40))
def test_after_signing_in_you_only_ever_go_to_a_dashboard_page(target: str) -> None:
    place = safe_next(target)
    assert place.startswith("/ui/") and not place.startswith("//") and "\\" not in place
    assert place == target or place == "/ui/"


# ------------------------------------------------------------------ values


@given(st.dictionaries(st.sampled_from(["period", "start", "end", "x"]),
                       st.one_of(st.text(max_size=30), st.sampled_from(
                           ["all", "1h", "1d", "7d", "30d", "custom", "2027-01-01T00:00",
                            "2027-01-01", "1800000000", "2027-01-01T00:00Z"])),
                       max_size=3))
def test_a_period_is_chosen_or_refused_by_name(params: dict[str, str]) -> None:
    now = 1_800_000_000.0
    try:
        period = Period.parse(params, now)
    except FieldError as exc:
        assert exc.field in {"period", "start", "end"}
        return
    if period.start is not None and period.end is not None:
        assert period.start < period.end
    assert Period.parse(dict(period.params()), now) == period  # its links choose it again


@settings(max_examples=60)
@given(st.lists(st.tuples(st.floats(0, 1e6), st.integers(0, 10**7)), max_size=80))
def test_the_chart_stays_inside_its_frame(values: list[tuple[float, int]]) -> None:
    times = [1_800_000_000.0 + 3600 * i for i in range(len(values))]
    chart = Chart.of(times, [v[0] for v in values], [float(v[1]) for v in values],
                     step="1h", step_seconds=3600)
    assert len(chart.points) == len(values)
    for p in chart.points:
        assert chart.left <= p.x and p.x + chart.bar_width <= chart.right + 0.01
        assert chart.top - 0.01 <= p.bar_y <= chart.bottom and p.bar_height >= 0
        assert chart.top - 0.01 <= p.dot_y <= chart.bottom
    assert 0 < chart.width == WIDTH and chart.height == HEIGHT


@given(st.floats(min_value=2e-9, max_value=1e12))
def test_axis_tops_are_round_and_close(value: float) -> None:
    top = nice_ceiling(value)
    assert value * (1 - 1e-9) <= top <= value * 10
    mantissa = f"{top:.6e}".split("e")[0].rstrip("0").rstrip(".")
    assert mantissa in {"1", "2", "2.5", "5"}
