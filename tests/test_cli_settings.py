"""The settings table and the parsers built from it: flags, environment variables, help."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway import __version__
from tollway.server.cli import main, parse_args
from tollway.server.setting_types import (
    Choice,
    Duration,
    Flag,
    Integer,
    KeyValue,
    Number,
    SecretFile,
)
from tollway.server.settings import COMMANDS, SETTINGS, settings_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "gateway.rules"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _no_tollway_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("TOLLWAY_"):
            monkeypatch.delenv(key)


# -------------------------------------------------------------------- the table


def test_each_command_takes_each_name_once_and_has_a_description() -> None:
    for cmd in COMMANDS:
        names = [s.name for s in settings_for(cmd.name)]
        assert len(names) == len(set(names)), cmd.name
        assert cmd.description and cmd.summary
    known = {c.name for c in COMMANDS}
    for s in SETTINGS:
        assert s.commands and set(s.commands) <= known, s.name
        assert s.help, s.name
        assert s.env is None or re.fullmatch(r"TOLLWAY_[A-Z_]+", s.env), s.env
        for other in s.conflicts:
            assert any(o.name == other for o in SETTINGS if set(o.commands) & set(s.commands))


def test_one_variable_means_one_thing() -> None:
    names: dict[str, set[str]] = {}
    for s in SETTINGS:
        if s.env is not None:
            names.setdefault(s.env, set()).add(s.name)
    shared = {env: found for env, found in names.items() if len(found) > 1}
    assert shared == {"TOLLWAY_RULES": {"rules", "paths", "path"}}  # where the rules are


def test_variables_are_for_server_and_connection_settings_only() -> None:
    with_env = {(c, s.name) for s in SETTINGS if s.env for c in s.commands}
    offline = {name for cmd, name in with_env if cmd != "serve"}
    # the rules to read, where the server is, where the usage database is
    assert offline == {"paths", "path", "server", "usage-db"}


def test_defaults_are_values_of_their_type() -> None:
    for s in SETTINGS:
        if s.default in (None, [], "") or isinstance(s.type, Flag):
            continue
        shown = s.shown_default()
        assert shown is not None
        assert s.parse_env(shown) == s.default, s.name


def test_the_variables_are_documented_in_operations_md() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    section = doc.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(TOLLWAY_[A-Z_]+)`", section))
    assert documented == {s.env for s in SETTINGS if s.env}


# ------------------------------------------------------ environment and flags


def test_command_line_then_environment_then_default() -> None:
    env = {"TOLLWAY_GRACE": "2.5", "TOLLWAY_LISTEN": "127.0.0.1:7000"}
    args = parse_args(["serve", "--grace", "4"], env)
    assert (args.grace, args.listen, args.store) == (4.0, "127.0.0.1:7000", "memory")
    assert args.given == {"grace"}
    assert parse_args(["serve"], {"TOLLWAY_GRACE": ""}).grace == 10.0  # empty is unset
    assert parse_args(["serve", "--usage-retention", "12h"], {}).usage_retention == 43200.0
    assert parse_args(["serve"], {"TOLLWAY_USAGE_RETENTION": "7"}).usage_retention == 7 * 86400


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        ("serve", "TOLLWAY_GRACE", "abc"),
        ("serve", "TOLLWAY_LOG_LEVEL", "verbose"),
        ("serve", "TOLLWAY_LOG_FORMAT", "xml"),
        ("serve", "TOLLWAY_USAGE_MAX_MODELS", "0"),
        ("serve", "TOLLWAY_RELOAD_INTERVAL", "-1"),
        ("serve", "TOLLWAY_USAGE_RETENTION", "1y"),
    ],
)
def test_a_bad_variable_is_named_and_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    command: str, variable: str, value: str,
) -> None:
    monkeypatch.setenv(variable, value)
    code, out, err = run(capsys, command)
    assert (code, out) == (2, "")
    assert f"tollway {command}: error: {variable}: " in err
    assert repr(value) in err
    assert "Traceback" not in err


def test_a_bad_flag_value_is_named_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "serve", "--grace", "soon")
    assert code == 2
    assert "argument --grace: expected a duration" in err and "'soon'" in err
    code, _, err = run(capsys, "serve", "--log-level", "verbose")
    assert code == 2 and "argument --log-level: expected one of debug, info" in err


def test_variables_of_other_commands_are_not_read(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLLWAY_GRACE", "abc")
    monkeypatch.setenv("TOLLWAY_LIMIT", "abc")
    code, out, err = run(capsys, "check", str(EXAMPLE))
    assert code == 0, err
    assert "ok:" in out


def test_a_stray_user_variable_does_not_change_usage() -> None:
    args = parse_args(["usage"], {"TOLLWAY_USER": "alice", "TOLLWAY_SORT": "-last_seen",
                                  "TOLLWAY_SERVER": "10.0.0.1:5"})
    assert (args.user, args.sort, args.server) == (None, "-total_cost", "10.0.0.1:5")


def test_rules_paths_from_the_environment() -> None:
    env = {"TOLLWAY_RULES": f"a.rules{os.pathsep}b"}
    assert parse_args(["check"], env).paths == ["a.rules", "b"]
    assert parse_args(["check", "c"], env).paths == ["c"]
    assert parse_args(["fmt"], env).paths == []  # fmt rewrites files: only those named


def test_values_that_start_with_a_dash() -> None:
    args = parse_args(["usage", "--sort", "-request_count", "--search", "-x"], {})
    assert (args.sort, args.search) == ("-request_count", "-x")
    assert parse_args(["usage", "--sort=-last_seen"], {}).sort == "-last_seen"


def test_a_missing_value_is_still_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "usage", "--sort", "--groups")
    assert code == 2 and "--sort: expected one argument" in err


@pytest.mark.parametrize(
    "argv",
    [["--user", "a", "--groups"], ["--user", "a", "--sort", "last_seen"],
     ["--group", "g", "--limit", "5"], ["--user", "a", "--group", "g"], ["--json", "--csv"],
     ["--user", "a", "--start", "2026-01-01"]],
)
def test_conflicting_flags_are_an_error(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, "usage", *argv)
    assert (code, out) == (2, "")
    assert "cannot be used with" in err


def test_repeated_and_environment_only_settings_from_one_row(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The row forms other commands' flags use: repeated HEADER=ATTRIBUTE (serve's own
    --attribute-header row), and a secret."""
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    # --attribute-header (repeated), --store-password-file (SecretFile) and
    # TOLLWAY_STORE_PASSWORD (cli=False) are all real rows of the table
    assert parse_args(["serve"], {"TOLLWAY_STORE_PASSWORD": "pw"}).store_password == "pw"
    with pytest.raises(SystemExit):
        parse_args(["serve", "--store-password", "pw"], {})
    args = parse_args(
        ["serve", "--attribute-header", "x-team=team", "--attribute-header", "x-r=region",
         "--store-password-file", str(secret)], {},
    )
    assert args.attribute_header == [("x-team", "team"), ("x-r", "region")]
    assert args.store_password_file == "s3cret"
    env = {"TOLLWAY_ATTRIBUTE_HEADER": "x-a=a,x-b=b"}
    assert parse_args(["serve"], env).attribute_header == [("x-a", "a"), ("x-b", "b")]
    with pytest.raises(SystemExit) as stop:
        parse_args(["serve"], {"TOLLWAY_ATTRIBUTE_HEADER": "nonsense"})
    assert stop.value.code == 2


# ------------------------------------------------------------- help, version


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_help_shows_description_defaults_and_variables(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    flat = " ".join(out.split())
    cmd = next(c for c in COMMANDS if c.name == command)
    assert " ".join(cmd.description.split()) in flat
    for s in settings_for(command):
        assert (s.type.metavar if s.positional else s.flag) in flat
        if s.env:
            assert f"env: {s.env}" in flat, s.name
        default = s.shown_default()
        if default is not None:
            assert f"default: {default}" in flat, s.name


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert (code, out) == (0, f"tollway {__version__}\n")


def test_help_and_errors_never_show_a_traceback() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    env.update(TOLLWAY_GRACE="abc", TOLLWAY_LIMIT="abc", TOLLWAY_LOG_LEVEL="verbose")
    for argv, code in ((["serve", "--help"], 0), (["serve"], 2), (["usage", "--limit"], 2)):
        done = subprocess.run([sys.executable, "-m", "tollway", *argv], capture_output=True,
                              text=True, env=env, timeout=60)
        assert done.returncode == code, done.stderr
        assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- value types


@given(st.text(max_size=20))
def test_value_types_raise_only_value_errors(text: str) -> None:
    for kind in (Duration("s"), Duration("d", high=86400 * 3650), Integer(low=1),
                 Number(low=0, high=1), Choice(("a", "b")), Flag(), KeyValue()):
        try:
            kind.parse(text)
        except ValueError as exc:
            assert str(exc)


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_durations_show_what_they_parse(seconds: float) -> None:
    for kind in (Duration("s"), Duration("d")):
        assert kind.parse(kind.show(seconds)) == pytest.approx(seconds, rel=1e-5)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10", 10), ("1.5", 1.5), ("500ms", 0.5), ("5m", 300), ("2h", 7200), ("1d", 86400),
     ("1w", 604800), (".5s", 0.5)],
)
def test_duration_units(text: str, seconds: float) -> None:
    assert Duration("s").parse(text) == seconds


def test_bounds_and_secret_files(tmp_path: Path) -> None:
    assert Integer(low=1).parse("100_000") == 100_000
    with pytest.raises(ValueError, match="at least 1"):
        Integer(low=1).parse("0")
    with pytest.raises(ValueError, match="between 0 and 1"):
        Number(0, 1).parse("2")
    with pytest.raises(ValueError, match="finite"):
        Number().parse("nan")
    with pytest.raises(ValueError, match="no such file"):
        SecretFile().parse(str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        SecretFile().parse(str(tmp_path / "empty"))
