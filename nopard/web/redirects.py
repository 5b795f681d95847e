"""Tarballs whose bytes nopard does not send itself: nginx sends the stored file
(``NOPARD_ACCEL_REDIRECT``), or the client is redirected to the S3 object, presigned or
through a CDN (``NOPARD_TARBALL_REDIRECT``). nopard still decides who may have the tarball:
the route checks access first and calls ``TarballRedirects.answer`` only for an authorized GET.

Where a key's bytes live is the storage backend's rule (``FilesystemStorage.relative_url``,
``S3Storage.presigned_get``, ``S3Storage.object_url``); nothing here builds a path.
"""

from __future__ import annotations

from typing import Protocol

from twisted.web.iweb import IRequest

from nopard.settings.config import LiveSettings
from nopard.settings.values import PRESIGNED

# The redirect is an access decision made now, and a presigned URL expires: no client or shared
# cache may keep it (the tarball itself is immutable and cached by clients under its integrity).
REDIRECT_CACHE = "private, no-store"
# 302, not 307: every client follows it for a GET (npm, yarn 1, yarn 4, pnpm all do), and a
# tarball is only ever fetched with GET, so 307's "keep the method" adds nothing.
REDIRECT_STATUS = 302
# nginx's auth_request for a tarball (deploy/nginx/nopard.conf) carries this header: nopard then
# only decides (``TarballRedirects.decide``) and never sends the bytes in that answer.
DECISION_HEADER = b"X-Nopard-Decision"
# How long nginx may keep a yes that names no file (NOPARD_ACCEL_REDIRECT off, or a HEAD): it
# grants nothing, since nginx then asks nopard for the bytes and nopard checks access again.
SEND_IT_YOURSELF_TTL = 60


class StoredFiles(Protocol):
    """A store of files nginx can read (nopard.storage.fs)."""

    def relative_url(self, key: str) -> str:
        """``key``'s file as a quoted URL path relative to the store's directory."""


class StoredObjects(Protocol):
    """A store of objects clients can be sent to (nopard.storage.s3)."""

    async def presigned_get(self, key: str, seconds: int) -> str:
        """A URL that GETs ``key``'s object without credentials for ``seconds``."""

    def object_url(self, base: str, key: str) -> str:
        """``key``'s object under ``base`` (a CDN in front of the bucket)."""


class TarballRedirects:
    """Whether, and how, an authorized tarball GET is answered without its bytes.

    nopard.service passes the store as ``files`` (filesystem) or ``objects`` (S3); with
    neither, or with the settings off, tarballs are sent by nopard as usual.
    """

    def __init__(self, settings: LiveSettings, files: StoredFiles | None = None,
                 objects: StoredObjects | None = None) -> None:
        self._settings = settings
        self._files = files
        self._objects = objects

    @property
    def active(self) -> bool:
        """True when tarball GETs are handed to nginx or redirected (the settings say which)."""
        current = self._settings.current
        return bool(current.accel_redirect and self._files) or bool(current.tarball_redirect and self._objects)

    @property
    def sends_files(self) -> bool:
        """True when nginx sends stored files itself (NOPARD_ACCEL_REDIRECT on a filesystem store)."""
        return bool(self._settings.current.accel_redirect and self._files)

    @staticmethod
    def is_decision(request: IRequest) -> bool:
        """Whether ``request`` is nginx's auth_request asking only whether (and which file) to send."""
        return request.getHeader(DECISION_HEADER) is not None

    @staticmethod
    def send_it_yourself(request: IRequest) -> bytes:
        """A yes naming no file: nginx asks nopard again, without the decision header, for the bytes."""
        request.setResponseCode(204)
        request.setHeader(b"X-Accel-Expires", b"%d" % SEND_IT_YOURSELF_TTL)
        return b""

    async def answer(self, request: IRequest, key: str) -> bytes:
        """Answer ``request`` for the stored tarball ``key`` (Content-Type and Cache-Control are set)."""
        current = self._settings.current
        if current.accel_redirect and self._files is not None:
            # nginx drops this answer's body and most headers (it keeps Content-Type and
            # Cache-Control) and sends the file under its internal location instead.
            request.setHeader(b"X-Accel-Redirect", (current.accel_redirect + self._files.relative_url(key)).encode())
            request.setHeader(b"Content-Length", b"0")
            if current.accel_cache_ttl:
                # How long nginx's decision cache may answer this URL for these credentials
                # without asking again (a yes only: refusals carry no such header).
                request.setHeader(b"X-Accel-Expires", b"%d" % current.accel_cache_ttl)
            return b""
        assert self._objects is not None  # `active` said so
        if current.tarball_redirect == PRESIGNED:
            location = await self._objects.presigned_get(key, current.tarball_redirect_ttl)
        else:
            location = self._objects.object_url(current.tarball_redirect, key)
        request.setResponseCode(REDIRECT_STATUS)
        request.setHeader(b"Location", location.encode())
        request.setHeader(b"Cache-Control", REDIRECT_CACHE)
        request.setHeader(b"Content-Length", b"0")
        return b""
