"""tollway for the LiteLLM proxy: enable it in the proxy's config file.

```yaml
litellm_settings:
  callbacks: ["tollway.integrations.litellm.handler"]
callback_settings:
  tollway:
    target: 127.0.0.1:50051
```

``handler`` is the ``TollwayHandler`` the proxy loads; its settings are read from
``callback_settings.tollway`` at the first call. See docs/integrations.md.
"""

from __future__ import annotations

from .handler import STATE_KEY, TollwayHandler
from .settings import Settings

__all__ = ["handler", "TollwayHandler", "Settings", "STATE_KEY"]

handler = TollwayHandler()
