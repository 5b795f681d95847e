"""The firewall's parts of the pages: withheld versions on a package's page, the counts on the
status page, and the blocks page (admins), as ``twisted.web.template`` tags built by pure functions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.web.template import Tag, tags

from nopard.domain.firewall import Block, Hidden
from nopard.domain.times import iso_time
from nopard.web.pages import Viewer, csrf_field, layout, link


def withheld_section(withheld: Mapping[str, Hidden]) -> Tag | str:
    """The versions withheld from this package's answers: quarantined until when, or blocked why."""
    if not withheld:
        return ""
    rows = []
    for version, hidden in sorted(withheld.items()):
        until = "when an admin lifts the block" if hidden.until is None and hidden.kind == "blocked" else (
            iso_time(hidden.until) if hidden.until is not None else "once the upstream gives its time")
        published = iso_time(hidden.published) if hidden.published is not None else "unknown"
        rows.append(tags.tr(tags.th(version, scope="row"), tags.td(hidden.kind), tags.td(published),
                            tags.td(until), tags.td(hidden.reason)))
    return tags.section(**{"aria-labelledby": "withheld-h"})(
        tags.h2("Withheld versions", id="withheld-h"),
        tags.p("Not served to any client (documents, versions, tarballs) until released."),
        tags.table(class_="withheld")(
            tags.thead(tags.tr(*[tags.th(head, scope="col") for head in
                                 ("Version", "Why", "Published", "Served from", "Reason")])),
            tags.tbody(*rows)),
    )


def firewall_status(firewall: dict[str, Any] | None) -> Tag | str:
    """The status page's counts of versions withheld."""
    if not firewall:
        return ""
    withheld = firewall.get("withheld") or {}
    age = firewall.get("min_release_age") or 0
    quarantine = f"new upstream versions withheld for {age:g} s" if age else "off"
    return tags.section(**{"aria-labelledby": "firewall-h"})(
        tags.h2("Firewall", id="firewall-h"),
        tags.p(f"Quarantine: {quarantine}."),
        tags.p(f"Versions withheld now (among the documents this instance prepared): "
               f"{withheld.get('quarantined', 0)} quarantined, {withheld.get('blocked', 0)} blocked."),
        tags.p(f"Tarballs and versions refused since start: {firewall.get('refused', {}).get('quarantined', 0)} "
               f"quarantined, {firewall.get('refused', {}).get('blocked', 0)} blocked."),
    )


def blocks_page(viewer: Viewer, blocks: list[Block], error: str | None = None) -> Tag:
    """Every block, each with a remove button, and a form to add one (admins)."""
    rows = [tags.tr(tags.th(block.spec, scope="row"), tags.td(block.reason), tags.td(block.source),
                    tags.td(iso_time(block.created)),
                    tags.td(tags.form(method="post", action=link(viewer, "/-/web/blocks"))(
                        csrf_field(viewer), tags.input(type="hidden", name="remove", value=block.id),
                        tags.button("Remove", type="submit", **{"aria-label": f"Remove the block {block.spec}"}))))
            for block in blocks]
    listing: Tag = (tags.table(tags.thead(tags.tr(*[tags.th(head, scope="col") for head in
                                                    ("Block", "Reason", "Source", "Created", "")])),
                               tags.tbody(*rows)) if rows else tags.p("No blocks."))
    form = tags.form(method="post", action=link(viewer, "/-/web/blocks"))(
        csrf_field(viewer),
        tags.label("Package and range (npm's, e.g. left-pad@>=1.2.3 <1.2.6)", for_="block-spec"),
        tags.input(id="block-spec", name="spec", required="required"),
        tags.label("Reason clients are told", for_="block-reason"),
        tags.input(id="block-reason", name="reason", required="required"),
        tags.button("Block", type="submit"),
    )
    return layout(viewer, "Blocks", tags.h1("Blocks"),
                  tags.p(class_="error", role="alert")(error) if error else "",
                  tags.p("Blocked versions vanish from every answer; their tarballs answer 451 with the reason."),
                  listing, tags.h2("Add a block"), form)
