"""Readme renderers for in-process tests: one that renders at once, one the test answers."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed

from nopard.web.readme import render_readme
from nopard.web.readme_worker import RenderTooSlow


class InlineRenderer:
    """Renders at once, in the test's thread (no time budget: tests give it small readmes)."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def render(self, text: str) -> Deferred[str]:
        """The readme's HTML, already there."""
        self.texts.append(text)
        try:
            return succeed(render_readme(text))
        except Exception as error:  # noqa: BLE001 - the worker would answer a failure too
            return fail(error)


class HeldRenderer:
    """Every rendering waits until the test ends it: ``finish`` (rendered) or ``too_slow``."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, Deferred[str]]] = []
        self.texts: list[str] = []

    def render(self, text: str) -> Deferred[str]:
        """A Deferred the test fires."""
        answer: Deferred[str] = Deferred()
        self.pending.append((text, answer))
        self.texts.append(text)
        return answer

    def finish(self) -> None:
        """The oldest rendering ends, rendered for real."""
        text, answer = self.pending.pop(0)
        answer.callback(render_readme(text))

    def too_slow(self) -> None:
        """The oldest rendering outlives its budget (the worker killed its process)."""
        _text, answer = self.pending.pop(0)
        answer.errback(RenderTooSlow("rendering outlived its budget"))
