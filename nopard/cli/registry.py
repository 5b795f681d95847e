"""What nopard-admin's commands share: the error they exit with, and the registry directory
the offline ones work on (the daemon's settings, with --registry-path applied)."""

from __future__ import annotations

import argparse
import os
from typing import Any


class AdminError(Exception):
    """A command could not do its work (nopard unreachable, a missing user, token or folder); the message says why."""


def registry_settings(options: argparse.Namespace, must_exist: bool = True) -> Any:
    """The daemon's settings (environment), with --registry-path applied; the directory checked."""
    from nopard.settings.config import ConfigError, load_settings

    given = {"registry_path": options.registry_path} if options.registry_path else {}
    try:
        settings = load_settings(given, os.environ)
    except ConfigError as error:
        raise AdminError(str(error)) from None
    if must_exist and not os.path.isdir(settings.registry_path):
        raise AdminError(f"registry directory {settings.registry_path} does not exist "
                         "(set NOPARD_REGISTRY_PATH or --registry-path)")
    return settings
