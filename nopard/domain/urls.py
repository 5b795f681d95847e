"""URLs as nopard shows them: never with the ``user:password@`` a forwarder, scope upstream or
proxy URL may carry (the health answer, the status page and API, sync reports, logs)."""

from __future__ import annotations

import re

REDACTED = "<redacted>"
# The userinfo of any URL in a text: from "scheme://" to the last "@" before the path (a password may hold "@").
_USERINFO = re.compile(r"(?<=://)[^/?#\s\"'<>]*@")


def without_credentials(text: str, marked: bool = True) -> str:
    """``text`` with the ``user:password@`` of every URL in it replaced by ``<redacted>@``
    (``marked`` False: removed, as in a metric label)."""
    return _USERINFO.sub(REDACTED + "@" if marked else "", text)
