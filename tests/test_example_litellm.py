"""examples/litellm stays valid: its rules check clean, pass their tests and are formatted;
its config enables the hook by an importable name, with settings the hook accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_harness import import_or_skip

from tollway.server.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "litellm"


def test_the_policy_checks_clean_and_passes_its_tests(capsys: pytest.CaptureFixture[str]) -> None:
    rules = str(EXAMPLE / "policy.rules")
    assert main(["check", rules]) == 0
    assert main(["test", rules]) == 0
    assert main(["fmt", "--check", rules]) == 0
    out, err = capsys.readouterr()
    assert "0 warnings" in out + err and "2 passed, 0 failed" in out + err


def test_the_config_enables_the_hook_with_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    yaml = import_or_skip("yaml", "reading the example config needs PyYAML (extra .[litellm])")
    import_or_skip("litellm", "the hook needs the extra .[litellm]")
    import importlib

    from tollway.integrations.litellm import Settings, TollwayHandler

    config = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
    [callback] = config["litellm_settings"]["callbacks"]
    module, _, name = callback.rpartition(".")
    assert isinstance(getattr(importlib.import_module(module), name), TollwayHandler)
    for variable in ("TOLLWAY_TARGET", "TOLLWAY_TIMEOUT"):
        monkeypatch.delenv(variable, raising=False)
    assert Settings.parse(config["callback_settings"]["tollway"]) == Settings()  # the defaults
    monkeypatch.setenv("TOLLWAY_TARGET", "unix:/run/tollway.sock")
    monkeypatch.setenv("TOLLWAY_TIMEOUT", "0.2")
    settings = Settings.parse(config["callback_settings"]["tollway"])
    assert (settings.target, settings.timeout) == ("unix:/run/tollway.sock", 0.2)
