"""Files that are not rule files at all: each is refused with a clear ``RulesError``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollway.dsl import load_text
from tollway.dsl.diagnostics import RulesError
from tollway.dsl.parser import parse_path, parse_text
from tollway.dsl.source import MAX_FILE_BYTES


def refusal(path: Path) -> str:
    with pytest.raises(RulesError) as info:
        parse_path(path)
    assert len(info.value.errors) == 1, info.value.render()
    return info.value.errors[0].message


def text_refusal(text: str) -> list[str]:
    with pytest.raises(RulesError) as info:
        parse_text(text, "t.rules")
    return [d.message for d in info.value.errors]


def test_empty_file(tmp_path: Path) -> None:
    f = tmp_path / "empty.rules"
    f.write_bytes(b"")
    assert refusal(f) == "file is empty: expected a rule, quota, balance, price, schema, default or test"
    assert text_refusal("  \n\t\n") == [
        "file is empty: expected a rule, quota, balance, price, schema, default or test"
    ]


def test_only_comments(tmp_path: Path) -> None:
    f = tmp_path / "comments.rules"
    f.write_text("# nothing here yet\n   # still nothing\n")
    assert refusal(f) == "file has only comments: expected a rule, quota, balance, price, schema, default or test"


def test_invalid_utf8(tmp_path: Path) -> None:
    f = tmp_path / "latin1.rules"
    f.write_bytes('rule r { deny "caf\xe9" }\n'.encode("latin-1"))
    with pytest.raises(RulesError) as info:
        parse_path(f)
    d = info.value.errors[0]
    assert d.message == "not a UTF-8 text file (invalid byte 0xe9 at offset 18)"
    assert (d.line, d.column) == (1, 19)


def test_binary_garbage(tmp_path: Path) -> None:
    f = tmp_path / "blob.rules"
    f.write_bytes(bytes(range(256)) * 4)
    assert refusal(f).startswith("not a text file (NUL byte at offset 0)")


def test_nul_bytes_in_text(tmp_path: Path) -> None:
    f = tmp_path / "nul.rules"
    f.write_bytes(b"rule r { allow }\n\x00\x00")
    assert refusal(f) == "not a text file (NUL byte at offset 17): is this a binary?"


def test_a_file_over_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    f = tmp_path / "huge.rules"
    line = b"rule r { allow }\n"
    f.write_bytes(line * (10 * 1024 * 1024 // len(line)))
    assert refusal(f) == "file is too large (10.0 MiB; the limit is 4 MiB)"
    assert text_refusal("#" * (MAX_FILE_BYTES + 1)) == [
        "file is too large (4.0 MiB; the limit is 4 MiB)"
    ]


def test_unterminated_strings() -> None:
    assert text_refusal('rule r {\n  deny "never closed\n}\n') == [
        "unterminated string: missing closing quote"
    ]
    assert text_refusal('test "no end') == ["unterminated string: missing closing quote"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rule r { when " + "(" * 10_000 + "user.a == 1" + ")" * 10_000 + " allow }",
            "condition nested deeper than 64 levels",
        ),
        (
            "rule r { when " + "not " * 10_000 + "user.a == 1 allow }",
            "condition nested deeper than 64 levels",
        ),
        (
            'test "t" { request ' + "{a: " * 10_000 + "1" + "}" * 10_000 + " }",
            "value nested deeper than 64 levels",
        ),
        (
            'test "t" { request { a: ' + "[" * 10_000 + "]" * 10_000 + " } }",
            "value nested deeper than 64 levels",
        ),
        ("rule r { when " + "(" * 10_000 + " allow }", "condition nested deeper than 64 levels"),
    ],
)
def test_deep_nesting_is_refused_without_recursion(text: str, message: str) -> None:
    limit = sys.getrecursionlimit()
    assert text_refusal(text) == [message]
    assert sys.getrecursionlimit() == limit


def test_nesting_up_to_the_limit_parses() -> None:
    depth = 60
    rf = parse_text(
        "rule r { when " + "(" * depth + "user.a == 1" + ")" * depth + " allow }", "t.rules"
    )
    assert rf.rules[0].condition is not None


def test_a_missing_path(tmp_path: Path) -> None:
    assert refusal(tmp_path / "nope.rules") == "no such file"


def test_a_directory_without_rule_files(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# rules live elsewhere")
    assert refusal(tmp_path) == "no .rules files in this directory"


def test_a_broken_link_in_a_directory(tmp_path: Path) -> None:
    (tmp_path / "good.rules").write_text("rule r { allow }\n")
    (tmp_path / "gone.rules").symlink_to(tmp_path / "missing-target")
    assert refusal(tmp_path) == "cannot read: no such file (or a broken link)"


def test_a_directory_named_like_a_rule_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "odd.rules").mkdir()
    (tmp_path / "real.rules").write_text("rule r { allow }\n")
    assert [Path(f.path).name for f in parse_path(tmp_path).files] == ["real.rules"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file(tmp_path: Path) -> None:
    f = tmp_path / "secret.rules"
    f.write_text("rule r { allow }\n")
    f.chmod(0)
    try:
        assert refusal(f) == "cannot read: permission denied"
    finally:
        f.chmod(0o600)


def test_errors_never_leak_lark_internals() -> None:
    for text in ("@@@", "rule r { when user.a == }", "quota", "rule r {", "}}}}", "test 5 {}"):
        for message in text_refusal(text):
            for internal in ("__ANON", "Token(", "$END", "Traceback", "Lark"):
                assert internal not in message, message


WORDS = [
    "rule",
    "quota",
    "test",
    "schema",
    "default",
    "allow",
    "deny",
    "when",
    "enforce",
    "limit",
    "check",
    "route",
    "annotate",
    "if",
    "and",
    "or",
    "not",
    "in",
    "exists",
    "limits",
    "to",
    "per",
    "for",
    "each",
    "everyone",
    "user",
    "group",
    "request",
    "model",
    "priority",
    "shadow",
    "expect",
    "times",
    "on_store_error",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ".",
    ":",
    "=",
    "==",
    "!=",
    "<",
    ">=",
    "~",
    "%",
    "of",
    '"s"',
    '"',
    "1",
    "2.5",
    "-3",
    "1h",
    "0s",
    "month",
    "x",
    "user.tier",
    "#c\n",
    "\n",
    "true",
    "null",
    "\\",
    "\x00",
    "é",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join))
def test_token_soup_never_raises_anything_but_rules_error(text: str) -> None:
    try:
        parse_text(text, "soup.rules")
    except RulesError as exc:
        assert exc.errors
        for d in exc.errors:
            assert d.message and d.line >= 0 and d.column >= 0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_text_never_raises_anything_but_rules_error(text: str) -> None:
    try:
        parse_text(text, "junk.rules")
    except RulesError as exc:
        assert exc.errors


EXAMPLE_LINES = (
    Path(__file__).resolve().parent.parent / "examples" / "gateway.rules"
).read_text().split("\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, len(EXAMPLE_LINES) - 1),
    st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join),
)
def test_a_broken_line_in_a_good_ruleset_is_reported_never_a_crash(line: int, soup: str) -> None:
    """After a syntax error the checker runs on what parsed: it must cope with any part
    missing (a quota whose rule is gone, a rule whose quota is gone, a lone test)."""
    lines = list(EXAMPLE_LINES)
    lines[line] = soup
    try:
        load_text("\n".join(lines), "broken.rules")
    except RulesError as exc:
        assert exc.errors
        for d in exc.errors:
            assert d.message and d.line >= 0 and d.column >= 0


def test_hidden_files_such_as_editor_locks_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "real.rules").write_text("rule r { allow }\n")
    (tmp_path / ".#real.rules").symlink_to("user@host.1234")  # how emacs marks a file open
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "old.rules").write_text("garbage")
    assert [Path(f.path).name for f in parse_path(tmp_path).files] == ["real.rules"]
