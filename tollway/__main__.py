"""``python -m tollway`` is the ``tollway`` command."""

from tollway.server.cli import main

raise SystemExit(main())
