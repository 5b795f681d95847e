"""A tarball being fetched: the spool file it is written to as it arrives, and the clients following it.

The fetch appends the upstream's bytes to the spool (``Spool.append``) while
it hashes them; every client that asked for the tarball meanwhile reads them
back from the file at its own pace (``SpoolBlob``, a push producer), so a slow
client costs disk, never memory, and a client that hangs up costs the fetch
nothing. The last byte is held back until the fetch's verdict: a verified
tarball is sent whole, a refused one is cut short (``send_to`` raises and the
route closes the connection before the declared length), so no client can
take a corrupt tarball for a whole one.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

SPOOL_PREFIX = ".fetch-"
_OWNED = re.compile(re.escape(SPOOL_PREFIX) + r"(\d+)-")


def remove_orphans(directory: str, running: Callable[[int], bool]) -> int:
    """Remove the spool files of processes no longer ``running`` (killed mid-fetch); how many.

    Every process (a NOPARD_WORKERS worker started again, nopard after a crash) runs it at
    start: the spools of live processes sharing the directory are theirs and stay.
    """
    removed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        owner = _OWNED.match(name)
        if owner is not None and int(owner.group(1)) != os.getpid() and not running(int(owner.group(1))):
            try:
                os.unlink(os.path.join(directory, name))
                removed += 1
            except FileNotFoundError:
                pass  # another process removed it first
    return removed


# Bytes read from the spool per write to a client (what one follower holds at most, besides
# its transport's buffer).
CHUNK = 64 * 1024


class Spool:
    """The spool file of one tarball fetch: appended by the fetch, read back by its followers.

    ``length`` is the size the upstream declared (its Content-Length), which
    followers announce to their clients. The file is read with ``pread`` on one
    descriptor, which stays open while a follower reads, even after the fetch
    removed the file's name.
    """

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        # The pid in the name: a process killed mid-fetch leaves its spool, which remove_orphans finds.
        self._fd, self.path = tempfile.mkstemp(dir=directory, prefix=f"{SPOOL_PREFIX}{os.getpid()}-")
        self.length: int | None = None
        self.written = 0
        self.verified = False
        self.failure: BaseException | None = None
        self.ended = False
        self._followers: set[SpoolBlob] = set()

    def append(self, chunk: bytes) -> None:
        """Write ``chunk`` at the end of the spool and tell the followers."""
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view):]
        self.written += len(chunk)
        self._notify()

    def readable(self) -> int:
        """How many bytes followers may send: all once verified, else all but the last one."""
        return self.written if self.verified else max(self.written - 1, 0)

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes (at most) from ``offset``."""
        return os.pread(self._fd, size, offset)

    def verify(self) -> None:
        """The tarball matched its checksums (and is stored): followers may send the rest."""
        self.verified = True
        self._notify()

    def fail(self, error: BaseException) -> None:
        """The fetch failed (a mismatch, a body broken off): followers cut their clients' downloads."""
        if not self.verified and self.failure is None:
            self.failure = error
            self._notify()

    def end(self) -> None:
        """The fetch is over: remove the file's name (followers keep reading their descriptor)."""
        self.ended = True
        if self.failure is None and not self.verified:
            self.fail(RuntimeError("the fetch ended without a verdict"))
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._release()

    def follow(self) -> SpoolBlob:
        """A new follower, sending the tarball from its first byte (only before ``end``)."""
        assert not self.ended
        follower = SpoolBlob(self)
        self._followers.add(follower)
        return follower

    def leave(self, follower: SpoolBlob) -> None:
        """``follower`` is done with the spool."""
        self._followers.discard(follower)
        self._release()

    def _release(self) -> None:
        if self.ended and not self._followers and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _notify(self) -> None:
        for follower in list(self._followers):
            follower.pump()


@implementer(IPushProducer)
class SpoolBlob:
    """A client following a spool: a ``Blob`` whose bytes come from the spool as they arrive.

    A push producer: while its consumer (a request) is paused, nothing is read,
    so a slow client holds at most a chunk and its transport's buffer.
    """

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        assert spool.length is not None  # only spools of a known length are followed
        self.size: int = spool.length
        self._offset = 0
        self._paused = False
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self.sent = 0  # bytes written to the consumer (for tests and logs)

    async def send_to(self, consumer: IConsumer) -> None:
        """Send the tarball as it arrives, with flow control; raise the fetch's error if it fails.

        The error comes once bytes may have been sent: the caller must cut the
        answer then (close the connection), never finish it.
        """
        self._consumer = consumer
        self._done = Deferred(lambda _: self._detach())
        consumer.registerProducer(self, True)
        self.pump()
        await self._done

    def close(self) -> None:
        """Stop following without sending (a HEAD request); the fetch goes on."""
        self._detach()

    def pump(self) -> None:
        """Send what the spool holds beyond what was sent, while the consumer takes it."""
        spool = self._spool
        while self._consumer is not None and not self._paused:
            if spool.failure is not None:
                self._finish(spool.failure)
                return
            end = spool.readable()
            if self._offset < end:
                chunk = spool.read(self._offset, min(CHUNK, end - self._offset))
                self._offset += len(chunk)
                self.sent += len(chunk)
                self._consumer.write(chunk)  # may pause (or stop) this producer at once
                continue
            if spool.verified and self._offset >= spool.written:
                self._finish(None)
            return  # wait for the spool to grow

    def pauseProducing(self) -> None:
        """The client's buffer is full."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The client takes more."""
        self._paused = False
        self.pump()

    def stopProducing(self) -> None:
        """The client went away: nothing more to send; the fetch goes on for the others."""
        self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        consumer, done = self._consumer, self._done
        self._detach()
        if consumer is not None:
            consumer.unregisterProducer()
        if done is not None and not done.called:
            if error is None:
                done.callback(None)
            else:
                done.errback(error)

    def _detach(self) -> None:
        self._consumer = None
        self._spool.leave(self)

    def __repr__(self) -> str:
        return f"<SpoolBlob {self._offset}/{self.size}>"
