"""The mirror: upstream documents and tarballs kept here by the offline-first policy.

policy (the decision table), upstreams (which upstream serves a name),
documents (mirrored documents), tarballs (mirrored tarballs), served (what
clients get: local, mirrored or merged), provenance (signing keys and
attestations). ``build_mirror`` puts them together
the one way nopard.service (and the tests) need them.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from nopard.cluster.coordination import InProcessCoordination
from nopard.domain.changes import BLOCK
from nopard.domain.prepared import PreparedCache
from nopard.firewall.blocks import BlockList
from nopard.firewall.verdicts import Firewall
from nopard.local.packages import Registry
from nopard.local.signing import SigningKeys
from nopard.mirror.documents import ChangeRecorder, Coordination, MirroredDocuments
from nopard.mirror.provenance import Provenance
from nopard.mirror.served import Mirror
from nopard.mirror.tarballs import MirroredTarballs
from nopard.mirror.upstreams import Upstreams
from nopard.mirror.usage import UsageLog
from nopard.mirror.writeback import WriteBehind
from nopard.settings.acl import ALLOW_ALL, Policy
from nopard.settings.config import LiveSettings
from nopard.storage import Storage


@dataclass(frozen=True)
class MirrorParts:
    """The mirror's pieces: the routes use ``mirror``, the sync jobs and search the other two."""

    documents: MirroredDocuments
    tarballs: MirroredTarballs
    mirror: Mirror
    provenance: Provenance
    firewall: Firewall
    usage: UsageLog
    writes: WriteBehind  # fetched copies waiting to be written; nopard.service writes them at stop


def build_mirror(
    settings: LiveSettings, storage: Storage, registry: Registry, upstreams: Upstreams, cache: PreparedCache,
    clock: IReactorTime, spool_dir: str, log: Logger, coordination: Coordination | None = None,
    policy: Policy = ALLOW_ALL, changes: ChangeRecorder | None = None, write_behind: bool = False,
) -> MirrorParts:
    """The mirror over ``storage``, asking ``upstreams``; ``coordination`` None: this process alone;
    ``changes``: the feed new upstream copies and blocks are recorded in (None: none);
    ``write_behind``: fetched copies may be written after their answers (nopard alone on its store,
    NOPARD_MIRROR_WRITE_DELAY; mirror/writeback.py), else each before its answer ends."""
    shared: Coordination = coordination or InProcessCoordination()
    writes = WriteBehind(storage, clock, lambda: settings.current.mirror_write_delay, log, allowed=write_behind)
    documents = MirroredDocuments(settings, storage, cache, clock, log, shared, writes=writes)
    documents.changes = changes
    tarballs = MirroredTarballs(settings, storage, documents, shared, spool_dir, log, writes)

    async def blocks_changed(name: str) -> None:
        # Every prepared form of the package goes, here and (by its stamp) on every instance.
        cache.invalidate(name)
        await shared.bump(name)
        if changes is not None:
            await changes.record(name, BLOCK)

    firewall_log = Logger(namespace="nopard.firewall", observer=log.observer)
    blocks = BlockList(storage, clock.seconds, firewall_log, blocks_changed)
    firewall = Firewall(settings, policy, blocks, clock.seconds, firewall_log)
    usage = UsageLog(storage, clock, log)
    mirror = Mirror(settings, storage, registry, upstreams, documents, tarballs, cache, clock, shared, firewall, usage)
    signing = registry.signing or SigningKeys(storage, clock.seconds)
    provenance = Provenance(settings, storage, registry, upstreams, documents, signing, clock, log)
    return MirrorParts(documents, tarballs, mirror, provenance, firewall, usage, writes)
