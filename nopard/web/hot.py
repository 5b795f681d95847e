"""The hot routes without Klein's routing: GET and HEAD of package paths (documents, versions,
tarballs), the requests an install makes by the hundred.

Klein's per-request work (binding a werkzeug map, matching the rule, adapting the
request, its chain of Deferreds) cost about as much as serving a warm tarball
itself. ``HotRoutes`` sits in front of the Klein resource: a GET or HEAD of a
plain package path goes straight to the same handler Klein would call
(``PackageRoutes.package``), and its errors to the same JSON answers
(``errors.error_answer``); everything else (other methods, ``/-/`` routes, ``/``,
paths werkzeug would answer with a redirect, such as ``//`` or a trailing ``/``)
goes to Klein. The site (access log, metrics, body limits) and the UTF-8 guard in
front are unchanged.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from nopard.web.api.packages import PackageRoutes
from nopard.web.errors import error_answer

_HOT_METHODS = (b"GET", b"HEAD")


def is_hot(request: IRequest) -> bool:
    """Whether ``request`` is a GET or HEAD of a package path Klein would route to the package handler."""
    path = request.path
    return (request.method in _HOT_METHODS and len(path) > 1 and not path.startswith(b"/-/")
            and b"//" not in path and not path.endswith(b"/") and path.startswith(b"/"))


class HotRoutes(Resource):
    """Package GETs and HEADs answered directly; every other request rendered by ``klein``."""

    isLeaf = True

    def __init__(self, klein: IResource, packages: PackageRoutes, log: Logger) -> None:
        super().__init__()
        self._klein = klein
        self._packages = packages
        self._log = log

    def render(self, request: IRequest) -> Any:
        """Serve a hot route, else let Klein route the request."""
        if not is_hot(request):
            return self._klein.render(request)
        answered = Deferred.fromCoroutine(self._packages.package(request, ""))
        finished: list[bool] = []
        # A client gone: its handler is cancelled (a stream stops), nothing more is written.
        def gone(_: Failure) -> None:
            finished.append(True)
            answered.cancel()

        request.notifyFinish().addCallbacks(  # type: ignore[attr-defined]  # a Request's, not IRequest's
            lambda _: finished.append(True), gone)
        answered.addCallbacks(
            lambda body: self._write(request, finished, body),
            lambda failure: self._failed(request, finished, failure),
        )
        return NOT_DONE_YET

    def _write(self, request: IRequest, finished: list[bool], body: bytes | None) -> None:
        if finished:
            return
        if body:
            request.write(body)
        request.finish()

    def _failed(self, request: IRequest, finished: list[bool], failure: Failure) -> None:
        if finished:
            if not failure.check(CancelledError):
                self._log.failure("error after the request finished", failure, event="error")
            return
        answer = error_answer(request, failure, self._log)
        if isinstance(answer, Deferred):
            return  # cut short: the connection goes, the request is never finished
        self._write(request, finished, answer)
