"""``tollway db upgrade``: migrate the usage database by hand (``serve`` does it on start).

Exit codes: 0 migrated or already current, 1 the database cannot be reached or was
migrated by a newer tollway, 2 a bad URL.
"""

from __future__ import annotations

import argparse
import sys

from tollway.policy.usage import UsageUnavailable
from tollway.policy.usage_db import SchemaTooNew, UsageDatabase, migrate
from tollway.policy.usage_db.database import redact_url

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    if args.action != "upgrade":
        print("tollway db: say what to do: 'tollway db upgrade'", file=sys.stderr)
        return 2
    url = args.usage_db
    try:
        database = UsageDatabase(url)
    except ValueError as exc:
        print(f"tollway db: {exc}", file=sys.stderr)
        return 2
    try:
        applied = database.prepare()
    except (SchemaTooNew, UsageUnavailable) as exc:
        print(f"tollway db: {exc}", file=sys.stderr)
        return 1
    finally:
        database.close()
    state = "migrated to" if applied else "already at"
    print(f"{redact_url(url)}: {state} schema revision {migrate.head()}")
    return 0
