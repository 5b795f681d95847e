"""What an access token nopard issues looks like, for the token store and for log redaction."""

from __future__ import annotations

# Every token starts with it, so a leaked one is recognisable (and redacted from logs).
TOKEN_PREFIX = "npd_"
