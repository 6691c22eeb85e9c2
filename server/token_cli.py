"""``tollway token new``: a fresh random token and the ``[[token]]`` block that grants it roles.

The block, which holds only the token's sha256, goes to stdout, so that
``tollway token new --name gw --roles decide >> tokens.toml`` appends it to the ``--auth``
file; the token itself goes to stderr, shown once and stored nowhere. ``--json`` prints
both as one JSON object on stdout, for scripts that hand the token to a secret store.
"""

from __future__ import annotations

import argparse
import json
import sys

from .auth import new_token, token_block, token_sha256
from .roles import ROLES

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    if args.action != "new":
        print("tollway token: say what to do: tollway token new --name N --roles R", file=sys.stderr)
        return 2
    name = args.name.strip()
    if not name or not name.isprintable():
        print("tollway token new: --name must be a non-empty printable name", file=sys.stderr)
        return 2
    roles = list(dict.fromkeys(r.strip() for r in args.roles.split(",") if r.strip()))
    unknown = [r for r in roles if r not in ROLES]
    if not roles or unknown:
        shown = f"unknown role {unknown[0]!r}" if unknown else "no role given"
        print(
            f"tollway token new: --roles: {shown}; expected {', '.join(ROLES)}", file=sys.stderr
        )
        return 2
    token = new_token()
    block = token_block(name, roles, token)
    if args.json:
        print(json.dumps({
            "name": name, "roles": roles, "token": token, "sha256": token_sha256(token),
            "toml": block,
        }))
        return 0
    print(f"token for {name} (shown once, stored nowhere; give it to the client):", file=sys.stderr)
    print(token, file=sys.stderr)
    print(block, end="")
    return 0
