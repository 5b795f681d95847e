"""nopard-admin fsck and gc on the registry directory: what they report, quarantine and remove,
and what a running nopard then serves (tests/admin_cli.py runs the console script)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.admin_cli import (
    add_user,
    admin,
    contents,
    flip_a_byte,
    leftover,
    local_copy,
    mirror_copy,
)
from tests.support import NopardServer, publish_body
from tests.upstream import FakeUpstream

# fsck and gc -------------------------------------------------------------------


def test_fsck_of_a_healthy_registry_is_exit_0(registry: Path) -> None:
    """Local and mirrored packages whose tarballs all verify: 'all well', exit 0."""
    mirror_copy(registry, "ms")
    local_copy(registry, "@acme/tool", "1.0.0", "1.1.0")
    result = admin(registry, "fsck")
    assert (result.returncode, result.stdout) == (0, "fsck: 2 documents, 4 tarballs checked; all well\n")


def test_fsck_agrees_with_what_nopard_publishes(closed: NopardServer) -> None:
    """Packages published over HTTP to a running nopard pass fsck."""
    add_user(closed.registry, "alice", "pw")
    token = closed.token("alice", "pw")
    for name, version in (("tool", "1.0.0"), ("tool", "1.1.0"), ("@acme/lib", "0.1.0")):
        answer = closed.request("PUT", "/" + name.replace("/", "%2f"), publish_body(name, version), token=token)
        assert answer.status in (200, 201), answer.body
    result = admin(closed.registry, "fsck")
    assert (result.returncode, result.stdout) == (0, "fsck: 2 documents, 3 tarballs checked; all well\n")


def test_fsck_quarantines_a_corrupt_tarball(registry: Path) -> None:
    """A flipped byte: the tarball moves to .quarantine/<same path>, is reported, exit 1."""
    mirror_copy(registry, "ms")
    tarball = registry / "packages" / "ms" / "upstream" / "tarballs" / "ms-2.1.3.tgz"
    flip_a_byte(tarball)
    corrupted = tarball.read_bytes()
    result = admin(registry, "fsck")
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "corrupt packages/ms/upstream/tarballs/ms-2.1.3.tgz: does not match the checksums of version 2.1.3; "
        "moved to .quarantine/packages/ms/upstream/tarballs/ms-2.1.3.tgz",
        "fsck: 1 documents, 2 tarballs checked; 1 problems (1 corrupt)",
    ]
    assert not tarball.exists()
    quarantined = registry / ".quarantine" / "packages" / "ms" / "upstream" / "tarballs" / "ms-2.1.3.tgz"
    assert quarantined.read_bytes() == corrupted


def test_gc_after_fsck_leaves_a_clean_registry(registry: Path) -> None:
    """fsck (exit 1) quarantines; gc removes the quarantine (exit 0); a second fsck exits 0."""
    mirror_copy(registry, "ms")
    flip_a_byte(registry / "packages" / "ms" / "upstream" / "tarballs" / "ms-2.0.0.tgz")
    assert admin(registry, "fsck").returncode == 1
    again = admin(registry, "fsck")
    assert again.returncode == 1 and again.stdout.startswith(
        "quarantined .quarantine/packages/ms/upstream/tarballs/ms-2.0.0.tgz: awaiting gc\n")
    collected = admin(registry, "gc")
    assert collected.returncode == 0
    assert collected.stdout.splitlines()[0].startswith(
        "removed .quarantine/packages/ms/upstream/tarballs/ms-2.0.0.tgz (quarantined, ")
    assert not (registry / ".quarantine").exists()
    assert admin(registry, "fsck").returncode == 0


def test_fsck_reports_a_local_document_naming_a_missing_tarball(registry: Path) -> None:
    """A local document naming a tarball that is not stored is reported (gc cannot fix it), exit 1."""
    area = local_copy(registry, "tool", "1.0.0", "2.0.0")
    (area / "tarballs" / "tool-1.0.0.tgz").unlink()
    result = admin(registry, "fsck")
    assert result.returncode == 1
    assert "missing packages/tool/tarballs/tool-1.0.0.tgz: version 1.0.0 names it, but it is not stored" \
        in result.stdout.splitlines()
    collected = admin(registry, "gc")
    assert collected.stdout == (
        "gc: removed 0 files (0 bytes); 1 problems gc cannot fix (nopard-admin fsck lists them)\n")


def test_mirrored_documents_may_name_tarballs_not_fetched(registry: Path) -> None:
    """A mirrored document naming versions never downloaded is normal: not reported."""
    area = mirror_copy(registry, "ms")
    (area / "tarballs" / "ms-2.0.0.tgz").unlink()
    assert admin(registry, "fsck").returncode == 0


def test_fsck_reports_orphan_tarballs(registry: Path) -> None:
    """A tarball no document names (untouched for a while) is an orphan; gc removes it."""
    area = local_copy(registry, "tool", "1.0.0")
    orphan = leftover(area / "tarballs" / "tool-0.9.0.tgz")
    result = admin(registry, "fsck")
    assert result.returncode == 1
    assert "orphan packages/tool/tarballs/tool-0.9.0.tgz: no document names it" in result.stdout.splitlines()
    collected = admin(registry, "gc")
    assert "removed packages/tool/tarballs/tool-0.9.0.tgz (orphan, 1 bytes)" in collected.stdout.splitlines()
    assert not orphan.exists() and (area / "tarballs" / "tool-1.0.0.tgz").exists()


def test_fsck_reports_leftover_temporary_files(registry: Path) -> None:
    """Old .tmp-*, .spool/.fetch-* and .htpasswd-* files are reported; fresh ones (writes in progress) are not."""
    local_copy(registry, "tool", "1.0.0")
    (registry / ".spool").mkdir()
    old = [leftover(registry / "packages" / "tool" / ".tmp-abc123"), leftover(registry / ".spool" / ".fetch-xyz"),
           leftover(registry / ".htpasswd-q1w2e3")]
    (registry / ".spool" / ".fetch-fresh").write_bytes(b"downloading")
    result = admin(registry, "fsck")
    assert result.returncode == 1
    reported = [line.split(":")[0] for line in result.stdout.splitlines()[:-1]]
    assert reported == ["temporary .htpasswd-q1w2e3", "temporary .spool/.fetch-xyz",
                        "temporary packages/tool/.tmp-abc123"]
    assert admin(registry, "gc").returncode == 0
    assert not any(path.exists() for path in old) and (registry / ".spool" / ".fetch-fresh").exists()


def test_fsck_reports_an_unreadable_document(registry: Path) -> None:
    """A document that is not JSON is reported and its tarballs are left alone, even by gc."""
    area = local_copy(registry, "tool", "1.0.0")
    (area / "package.json").write_text('{"name": "tool", "versions": ')
    result = admin(registry, "fsck")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == \
        "unreadable packages/tool/package.json: not a package document (tarballs beside it left alone)"
    admin(registry, "gc")
    assert (area / "tarballs" / "tool-1.0.0.tgz").exists()


def test_gc_dry_run_removes_nothing(registry: Path) -> None:
    """`gc --dry-run` prints what it would remove and leaves every file (and no quarantine)."""
    area = mirror_copy(registry, "ms")
    flip_a_byte(area / "tarballs" / "ms-2.1.3.tgz")
    leftover(registry / ".tmp-left")
    before = contents(registry)
    size = len(before["packages/ms/upstream/tarballs/ms-2.1.3.tgz"])
    result = admin(registry, "gc", "--dry-run")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "would remove .tmp-left (temporary, 1 bytes)",
        f"would remove packages/ms/upstream/tarballs/ms-2.1.3.tgz (corrupt, {size} bytes)",
        f"gc: would remove 2 files ({1 + size} bytes)",
    ]
    assert contents(registry) == before


def test_fsck_quarantined_tarball_is_fetched_again(start_nopard: Callable[..., NopardServer],
                                                   upstream: FakeUpstream) -> None:
    """On a running mirror: a corrupted cached tarball is quarantined and nopard fetches a good copy again."""
    upstream.fault("none")
    server = start_nopard({"NOPARD_FORWARDER_URL": upstream.url, "NOPARD_SYNC_INTERVAL": "0"})
    document = server.request("GET", "/ms").json()
    path = "/" + document["versions"]["2.1.3"]["dist"]["tarball"][len(server.url):]
    good = server.request("GET", path).body
    stored = server.registry / "packages" / "ms" / "upstream" / "tarballs" / "ms-2.1.3.tgz"
    assert admin(server.registry, "fsck").returncode == 0
    flip_a_byte(stored)
    assert admin(server.registry, "fsck").returncode == 1
    again = server.request("GET", path)
    assert again.status == 200 and again.body == good and again.headers["x-nopard-cache"] == "MISS"
    assert admin(server.registry, "gc").returncode == 0
    assert admin(server.registry, "fsck").returncode == 0
