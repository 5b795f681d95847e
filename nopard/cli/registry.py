"""What nopard-admin's commands share: the error they exit with, and the registry directory
or store the offline ones work on (the daemon's settings, with --registry-path applied)."""

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


def store_settings(options: argparse.Namespace, create: bool = False) -> Any:
    """The daemon's settings; the registry directory must exist (or is made, when ``create``) only when
    it is the store: with S3 these commands run on any machine with the bucket's settings."""
    settings = registry_settings(options, must_exist=False)
    if settings.storage != "s3" and not os.path.isdir(settings.registry_path):
        if not create:
            registry_settings(options)  # the error saying the directory does not exist
        os.makedirs(settings.registry_path)
        print(f"created registry directory {settings.registry_path}")
    return settings


def settings_and_store(options: argparse.Namespace, create: bool = False) -> tuple[Any, Any]:
    """The daemon's settings and the store they name, opened as the daemon opens it: the registry
    directory (checked, or made when ``create``), or with NOPARD_STORAGE=s3 the bucket
    NOPARD_S3_BUCKET under NOPARD_S3_PREFIX (credentials and endpoint from the AWS_* variables)."""
    from nopard.cli.maintenance import open_store

    settings = store_settings(options, create)
    return settings, open_store(settings)
