"""The operator credential: the secret nopard-admin sends for the operator routes (sync, prefetch).

At start nopard makes sure its token file (NOPARD_ADMIN_TOKEN_FILE, else
``<registry>/.nopard-admin-token``) holds a random token, readable by the
service user alone (mode 0600, so root and that user can run nopard-admin);
nopard-admin reads the file and sends the token in ``X-Nopard-Operator-Token``.
The file is made once, atomically, and kept: instances sharing a registry
directory share it, instances with their own directory or file have their own.
Remove it and restart to make a new one. Where a request comes from grants
nothing: behind a reverse proxy every request comes from 127.0.0.1.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import stat
import tempfile

from twisted.application.service import Service
from twisted.logger import Logger

OPERATOR_HEADER = "X-Nopard-Operator-Token"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


class TokenFileError(Exception):
    """The token file cannot be read or is not one nopard wrote; the message says which."""


def read_token_file(path: str) -> str:
    """The token in ``path``; TokenFileError when it is missing, unreadable or malformed."""
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            token = file.read(256).strip()
    except FileNotFoundError:
        raise TokenFileError(f"no operator token file {path} (nopard writes it when it starts)") from None
    except PermissionError:
        raise TokenFileError(f"cannot read the operator token file {path}: run nopard-admin as root or as "
                             "the user nopard runs as") from None
    except OSError as error:
        raise TokenFileError(f"cannot read the operator token file {path}: {error.strerror}") from None
    if not _TOKEN.fullmatch(token):
        raise TokenFileError(f"{path} does not hold an operator token nopard wrote")
    return token


def _own_token(path: str) -> str | None:
    """The token in ``path`` if it is a regular file of ours that nobody else may read."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        return None
    try:
        return read_token_file(path)
    except TokenFileError:
        return None


def ensure_token_file(path: str) -> str:
    """The operator token of ``path``, first made (random, mode 0600) when absent or not one of ours."""
    existing = _own_token(path)
    if existing is not None:
        return existing
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(token + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)  # created whole or not at all: an instance starting with us wins
        except FileExistsError:
            theirs = _own_token(path)
            if theirs is not None:
                return theirs
            os.replace(temporary, path)  # a file of another user, readable by others, or garbled
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    return token


class OperatorCredential:
    """The token this nopard accepts from nopard-admin; none (nothing accepted) until it is started."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def admits(self, presented: str | None) -> bool:
        """Whether ``presented`` is the token, compared in constant time."""
        if self.token is None or presented is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "replace"), self.token.encode("ascii"))


class OperatorTokenService(Service):
    """Makes sure the token file exists when nopard starts (after twistd dropped privileges)."""

    def __init__(self, credential: OperatorCredential, path: str, log: Logger) -> None:
        self._credential = credential
        self._path = path
        self._log = log

    def startService(self) -> None:
        super().startService()
        try:
            self._credential.token = ensure_token_file(self._path)
        except OSError as error:
            # nopard serves without it: admins still may sync; nopard-admin is refused and says why.
            self._log.error("cannot write the operator token file {path}: {error}", path=self._path,
                            error=error.strerror or str(error), event="operator-token-failed")
            return
        self._log.info("nopard-admin's operator token is in {path}", path=self._path, event="operator-token")
