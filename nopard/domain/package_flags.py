"""What users set on a package beside its versions: stars (``npm star``) and the
two-factor requirement for changing it (``npm access set mfa=...``). Pure functions
over a stored document, as in packument.py.
"""

from __future__ import annotations

import copy
from typing import Any

from nopard.domain.errors import InvalidInput

MFA_LEVELS = ("publish", "automation")  # npm access set mfa=...; none: the field is absent


def mfa_level(document: dict[str, Any] | None) -> str | None:
    """Whether changing the package needs two-factor authentication: ``publish``, ``automation``
    (a --bypass-2fa token may, too), or None."""
    level = (document or {}).get("mfa")
    return level if level in MFA_LEVELS else None


def set_mfa(document: dict[str, Any], body: Any) -> dict[str, Any]:
    """The document with the 2FA requirement ``npm access set mfa=...`` sends (libnpmaccess's
    ``publish_requires_tfa`` and ``automation_token_overrides_tfa``)."""
    if not isinstance(body, dict) or not isinstance(body.get("publish_requires_tfa"), bool):
        if isinstance(body, dict) and "access" in body:
            raise InvalidInput("who may install a package follows NOPARD_CONFIG's access rules here, "
                               "not npm access set status")
        raise InvalidInput("send publish_requires_tfa (true or false), as npm access set mfa=... does")
    changed = copy.deepcopy(document)
    if not body["publish_requires_tfa"]:
        changed.pop("mfa", None)
    else:
        changed["mfa"] = "automation" if body.get("automation_token_overrides_tfa") is True else "publish"
    return changed


def set_star(document: dict[str, Any], user: str, body: dict[str, Any]) -> dict[str, Any]:
    """Star or unstar for ``user`` as ``body["users"]`` says; other users' entries never change."""
    users = body.get("users")
    if not isinstance(users, dict):
        raise InvalidInput("users must be an object")
    changed = copy.deepcopy(document)
    stars = changed.setdefault("users", {})
    if users.get(user):
        stars[user] = True
    else:
        stars.pop(user, None)
    return changed


def starred_by(document: dict[str, Any], user: str) -> bool:
    """Whether ``user`` starred the package."""
    users = document.get("users")
    return isinstance(users, dict) and bool(users.get(user))
