"""The browser pages, as twisted.web.template tag trees built by pure functions.

Every text a user or package author wrote goes in as a string, which the
flattener escapes; the one exception is a readme, already sanitized by
nopard.web.readme, which ``render`` splices in at a marker comment (a marker
no escaped text can produce). Pages load nothing but nopard's own stylesheet,
and use no script at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.web.template import Comment, Flattenable, Tag, flattenString, tags

from nopard import __version__
from nopard.web.pages_sync import clock_time, sync_lines

README_MARKER = "nopard-readme"
DOCTYPE = b"<!DOCTYPE html>\n"


@dataclass
class Viewer:
    """Who looks at a page, and what the layout needs to know about the request."""

    user: str | None
    admin: bool
    csrf: str
    root: str  # path prefix of every link (NOPARD_BASE_URL's path, usually empty)
    base_url: str  # the registry URL for npm, yarn and pnpm
    query: str = ""


@dataclass
class Listed:
    """One package on the home page."""

    name: str
    version: str
    description: str
    origin: str  # local or upstream
    fetched_at: float | None = None


@dataclass
class VersionRow:
    """One version on a package page."""

    version: str
    published: str
    deprecated: str | None
    tarball_url: str
    size: int | None  # bytes, when stored here
    tags: list[str] = field(default_factory=list)

    @property
    def stored(self) -> bool:
        """Whether the tarball is stored here (else only upstream)."""
        return self.size is not None


async def render(page: Tag, readme_html: str | None = None) -> bytes:
    """The page as HTML bytes; ``readme_html`` (sanitized) replaces the readme marker."""
    body = DOCTYPE + await flattenString(None, page)
    if readme_html is not None:
        body = body.replace(f"<!--{README_MARKER}-->".encode(), readme_html.encode("utf-8"), 1)
    return body


def text_of(value: Any) -> str:
    """Any JSON value of a document's field as the text a page shows.

    Package documents come from anyone who can publish, or from the upstream:
    a description may be a number, an author an object, keywords a list. A
    string shows as itself, null as nothing, anything else as its JSON.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def mapping(value: Any) -> dict[str, Any]:
    """A field that should be an object (versions, dist-tags, time, dist...), or {} when it is not."""
    return value if isinstance(value, dict) else {}


def latest_manifest(document: dict[str, Any]) -> dict[str, Any]:
    """The manifest dist-tags.latest names, or {} (no such tag, version or object)."""
    latest = mapping(document.get("dist-tags")).get("latest")
    return mapping(mapping(document.get("versions")).get(latest)) if isinstance(latest, str) else {}


def link(viewer: Viewer, path: str) -> str:
    """A link to one of nopard's own paths (which start with /)."""
    return viewer.root + path


def package_path(viewer: Viewer, name: str) -> str:
    """The page of package ``name``."""
    return link(viewer, "/-/web/package/" + name)


def age(seconds: float | None) -> str:
    """'3 minutes ago' style."""
    if seconds is None:
        return "never"
    seconds = max(0, int(seconds))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"


SIZE_UNITS = ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB"))


def human_size(size: float | None) -> str:
    """Bytes in the largest of B, KiB, MiB, GiB they reach, one decimal (None: not stored here)."""
    if size is None:
        return "not stored here"
    for unit, name in SIZE_UNITS:
        if size >= unit:
            return f"{size / unit:.1f} {name}"
    return f"{int(size)} B"


def csrf_field(viewer: Viewer) -> Tag:
    """The hidden field every form that changes something carries."""
    return tags.input(type="hidden", name="csrf", value=viewer.csrf)


def layout(viewer: Viewer, title: str, *content: Any, status: str | None = None) -> Tag:
    """The frame of every page: skip link, navigation, search, main, footer."""
    nav_items = [tags.li(tags.a("Packages", href=link(viewer, "/"))),
                 tags.li(tags.a("Status", href=link(viewer, "/-/web/status")))]
    if viewer.admin:
        nav_items.append(tags.li(tags.a("Settings", href=link(viewer, "/-/web/settings"))))
    if viewer.user:
        account = tags.form(method="post", action=link(viewer, "/-/web/logout"), class_="inline")(
            tags.span("Signed in as ", tags.strong(viewer.user), " "), csrf_field(viewer),
            tags.button("Log out", type="submit"),
        )
    else:
        account = tags.a("Log in", href=link(viewer, "/-/web/login"))
    search = tags.form(role="search", method="get", action=link(viewer, "/"), class_="search")(
        tags.label("Search packages", for_="search-q"),
        tags.input(id="search-q", name="q", type="search", value=viewer.query),
        tags.button("Search", type="submit"),
    )
    notice = [tags.p(status, class_="notice", role="status")] if status else []
    return tags.html(lang="en")(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
            tags.title(f"{title} · nopard"),
            tags.link(rel="stylesheet", href=link(viewer, "/-/web/static/nopard.css")),
            tags.link(rel="icon", type="image/png", href=link(viewer, "/-/web/static/favicon.png")),
        ),
        tags.body(
            tags.a("Skip to content", href="#main", class_="skip"),
            tags.header(
                tags.a("nopard", href=link(viewer, "/"), class_="brand"),
                tags.nav(tags.ul(*nav_items), **{"aria-label": "Main"}),
                tags.div(account, class_="account"),
                search,
            ),
            Tag("main")(*notice, *content, id="main", tabindex="-1"),  # twisted's tags predate <main>
            tags.footer(f"nopard {__version__}"),
        ),
    )


# Home ------------------------------------------------------------------------


def home_page(viewer: Viewer, listed: list[Listed], counts: dict[str, int], now: float) -> Tag:
    """The registry at a glance: counts, then local and cached packages."""
    if not listed and not viewer.query and counts["local"] == 0 and counts["cached"] == 0:
        return start_page(viewer)
    heading = f"Packages matching “{viewer.query}”" if viewer.query else "Packages"
    summary = tags.p(class_="counts")(
        tags.strong(str(counts["local"])), " published here (local) · ",
        tags.strong(str(counts["cached"])), " mirrored (cached)",
    )
    if listed:
        rows = [_listed_row(viewer, item, now) for item in listed]
        table = tags.table(class_="packages")(
            tags.caption(f"{len(listed)} package{'s' if len(listed) != 1 else ''}"),
            tags.thead(tags.tr(tags.th("Package", scope="col"), tags.th("Version", scope="col"),
                               tags.th("Where", scope="col"), tags.th("Description", scope="col"))),
            tags.tbody(*rows),
        )
    else:
        table = tags.p("No package matches.")
    return layout(viewer, heading, tags.h1(heading), summary, table)


def _listed_row(viewer: Viewer, item: Listed, now: float) -> Tag:
    where: Flattenable
    if item.origin == "local":
        where = tags.span("local", class_="badge local")
    else:
        fetched = age(now - item.fetched_at) if item.fetched_at is not None else "never"
        where = [tags.span("cached", class_="badge cached"), " ", tags.small(f"metadata {fetched}")]
    return tags.tr(
        tags.th(tags.a(item.name, href=package_path(viewer, item.name)), scope="row"),
        tags.td(item.version), tags.td(where), tags.td(item.description),
    )


def start_page(viewer: Viewer) -> Tag:
    """An empty registry: how to point clients here and create the first user."""
    url = viewer.base_url.rstrip("/") + "/"
    commands = [
        ("npm", f"npm config set registry {url}"),
        ("yarn 1", f"yarn config set registry {url}"),
        ("yarn 2 and later (.yarnrc.yml)", f'npmRegistryServer: "{url}"'),
        ("pnpm", f"pnpm config set registry {url}"),
    ]
    return layout(
        viewer, "Welcome",
        tags.h1("This nopard is empty so far"),
        tags.p("Point your package manager at it; whatever it installs is then cached here, "
               "and keeps installing when the upstream registry is slow or gone."),
        tags.h2("Use this registry"),
        tags.dl(*[[tags.dt(client), tags.dd(tags.pre(tags.code(command)))] for client, command in commands]),
        tags.h2("Create the first user"),
        tags.p("Registration is open while there are fewer users than NOPARD_MAX_USERS:"),
        tags.pre(tags.code(f"npm adduser --registry {url}")),
        tags.p("or, on the registry's machine:"),
        tags.pre(tags.code("nopard-admin user add <name>")),
        tags.p("Then publish with ", tags.code("npm publish"), "."),
    )


# Package ---------------------------------------------------------------------


def package_page(
    viewer: Viewer, name: str, document: dict[str, Any], rows: list[VersionRow], origin: str,
    fetched_at: float | None, now: float, has_readme: bool, stored: int = 0, withheld: Any = "",
) -> Tag:
    """One package: install command, readme, versions, tags, dependencies.

    ``name``: the package asked for (the document's own ``name`` field may be
    anything); ``rows``: the newest versions shown; ``stored``: how many of all
    versions have their tarball here; ``withheld``: the firewall's section. Every field is read through ``text_of``
    and ``mapping``: the page shows whatever JSON the document holds.
    """
    manifest = latest_manifest(document)
    description = text_of(document.get("description")) or text_of(manifest.get("description"))
    badge = (tags.span("local", class_="badge local") if origin == "local"
             else tags.span("cached", class_="badge cached"))
    parts: list[Any] = [
        tags.h1(name, " ", badge),
        tags.p(description) if description else "",
        tags.h2("Install"),
        tags.pre(tags.code(f"npm install {name}")),
    ]
    if origin != "local":
        total = len(mapping(document.get("versions")))
        parts.append(_mirror_section(viewer, name, fetched_at, now, stored, total))
    parts += [
        tags.h2("Readme"),
        tags.div(Comment(README_MARKER), class_="readme") if has_readme else tags.p("No readme."),
        _tags_table(document),
        _dependencies(viewer, manifest),
        _versions_table(rows),
        withheld,
    ]
    return layout(viewer, name, *parts)


def _mirror_section(viewer: Viewer, name: str, fetched_at: float | None, now: float,
                    stored: int, total: int) -> Tag:
    section = tags.section(**{"aria-labelledby": "mirror-h"})(
        tags.h2("Mirror", id="mirror-h"),
        tags.p(f"Metadata last refreshed from the upstream: {age(now - fetched_at) if fetched_at else 'never'}. "
               f"Tarballs stored here: {stored} of {total} versions (the rest only upstream)."),
    )
    if viewer.admin:
        section(tags.form(method="post", action=package_path(viewer, name) + "/refresh")(
            csrf_field(viewer), tags.button("Refresh now", type="submit"),
        ))
    return section


def _tags_table(document: dict[str, Any]) -> Tag:
    dist_tags = mapping(document.get("dist-tags"))
    rows = [tags.tr(tags.th(tag, scope="row"), tags.td(text_of(version))) for tag, version in sorted(dist_tags.items())]
    return tags.section(**{"aria-labelledby": "tags-h"})(
        tags.h2("Dist-tags", id="tags-h"),
        tags.table(tags.thead(tags.tr(tags.th("Tag", scope="col"), tags.th("Version", scope="col"))),
                   tags.tbody(*rows)),
    )


def _dependencies(viewer: Viewer, manifest: dict[str, Any]) -> Tag:
    section = tags.section(**{"aria-labelledby": "deps-h"})(tags.h2("Dependencies of the latest version", id="deps-h"))
    found = False
    for kind, label in (("dependencies", "Dependencies"), ("peerDependencies", "Peer dependencies"),
                        ("optionalDependencies", "Optional dependencies")):
        deps = manifest.get(kind)
        if not isinstance(deps, dict) or not deps:
            continue
        found = True
        items = [tags.li(tags.a(dep, href=package_path(viewer, dep)), " ", tags.code(text_of(spec)))
                 for dep, spec in sorted(deps.items())]
        section(tags.h3(label), tags.ul(*items))
    if not found:
        section(tags.p("None."))
    return section


def _versions_table(rows: list[VersionRow]) -> Tag:
    body = []
    for row in rows:
        note = ([tags.span(" ", tags.strong("deprecated: "), row.deprecated, class_="deprecated")]
                if row.deprecated else [])
        labels: list[Flattenable] = [" ", *[tags.span(tag, class_="badge") for tag in row.tags]]
        download = tags.a("tarball", href=row.tarball_url, **{"aria-label": f"Download the tarball of {row.version}"})
        body.append(tags.tr(
            tags.th(row.version, *labels, *note, scope="row"), tags.td(row.published),
            tags.td(download, " ", tags.small(human_size(row.size))),
        ))
    return tags.section(**{"aria-labelledby": "versions-h"})(
        tags.h2("Versions", id="versions-h"),
        tags.table(class_="versions")(
            tags.thead(tags.tr(tags.th("Version", scope="col"), tags.th("Published", scope="col"),
                               tags.th("Download", scope="col"))),
            tags.tbody(*body),
        ),
    )


# Login -------------------------------------------------------------------------


def login_page(viewer: Viewer, action: str, error: str | None = None, username: str = "",
               heading: str = "Log in", email: bool = False, note: str | None = None) -> Tag:
    """The one login form (browser sessions and `npm login` alike)."""
    fields: list[Any] = [
        tags.label("User name", for_="username"),
        tags.input(id="username", name="username", autocomplete="username", required="required", value=username),
        tags.label("Password", for_="password"),
        tags.input(id="password", name="password", type="password", autocomplete="current-password",
                   required="required"),
    ]
    if email:
        fields += [tags.label("Email", for_="email"), tags.input(id="email", name="email", type="email",
                                                                   autocomplete="email")]
    else:  # accounts with two-factor authentication need their code; the others leave it empty
        fields += [tags.label("One-time password (if two-factor authentication is on)", for_="otp"),
                   tags.input(id="otp", name="otp", inputmode="numeric", autocomplete="one-time-code")]
    shown_error = [tags.p(error, class_="error", role="alert")] if error else []
    return layout(
        viewer, heading, tags.h1(heading), *([tags.p(note)] if note else []), *shown_error,
        tags.form(method="post", action=action, class_="login")(csrf_field(viewer), *fields,
                                                                 tags.button(heading, type="submit")),
    )


def message_page(viewer: Viewer, title: str, text: str) -> Tag:
    """A page with a heading and one paragraph (done, gone, forbidden...)."""
    return layout(viewer, title, tags.h1(title), tags.p(text))


# Settings ------------------------------------------------------------------------


SOURCE_LABELS = {"default": "default", "environment": "environment", "option": "twistd option",
                 "settings page": "settings page"}


def settings_page(viewer: Viewer, entries: list[dict[str, Any]], error: str | None = None,
                  invalid: str | None = None, saved: bool = False) -> Tag:
    """Each overridable setting, its value and where the value comes from; one form to change them."""
    rows = []
    for entry in entries:
        field_id = "setting-" + entry["name"]
        attributes = {"aria-describedby": field_id + "-help"}
        if invalid == entry["name"]:
            attributes["aria-invalid"] = "true"
        rows.append(tags.div(class_="setting")(
            tags.label(entry["env"], for_=field_id),
            tags.input(id=field_id, name=entry["name"], value=entry["value"], **attributes),
            tags.p(id=field_id + "-help", class_="help")(
                entry["help"], " ", tags.span(f"From: {SOURCE_LABELS.get(entry['source'], entry['source'])}.",
                                              class_="source"),
            ),
        ))
    shown = [tags.p(error, class_="error", role="alert")] if error else []
    return layout(
        viewer, "Settings", tags.h1("Settings"),
        tags.p("Values set here are stored in the registry, win over environment variables and options, "
               "and apply at once on every instance. Empty a field to go back to its environment or default value."),
        tags.p(tags.a("Blocked package versions", href=link(viewer, "/-/web/blocks")), " are on a page of their own."),
        *shown,
        tags.form(method="post", action=link(viewer, "/-/web/settings"), class_="settings")(
            csrf_field(viewer), *rows, tags.button("Save settings", type="submit"),
        ),
        status="Settings saved." if saved else None,
    )


# Status --------------------------------------------------------------------------


def status_page(viewer: Viewer, status: dict[str, Any], sync: dict[str, Any], hit_ratio: float | None,
                cache_counts: dict[str, int], storage: str, now: float, firewall: Any = "", day: Any = "") -> Tag:
    """Sync runs, upstream state, cache hit ratio, storage used; ``day``: the charts of the last day."""
    upstream_rows = []
    for upstream in status["upstreams"]:
        state = "healthy" if upstream["state"] == "closed" else "down"
        since = upstream.get("down_since")
        text = state if since is None else f"{state} since {clock_time(since)} ({age(now - since)})"
        upstream_rows.append(tags.tr(tags.th(upstream["url"], scope="row"), tags.td(text),
                                     tags.td(str(upstream["requests"]))))
    job_rows = []
    for job, report in (sync.get("jobs") or {}).items():
        if not report:
            job_rows.append(tags.tr(tags.th(job, scope="row"), tags.td("never"), tags.td(""), tags.td("")))
            continue
        if report.get("running"):
            outcome = "running"
        else:
            outcome = report.get("skipped") or (f"{report.get('checked', 0)} checked, {report.get('changed', 0)} "
                                                f"changed, {report.get('tarballs', 0)} tarballs fetched, "
                                                f"{report.get('failure_count', 0)} failed")
        job_rows.append(tags.tr(tags.th(job, scope="row"), tags.td(report.get("started") or ""),
                                tags.td(report.get("ended") or ""), tags.td(outcome)))
    ratio = "no document or tarball served yet" if hit_ratio is None else f"{hit_ratio * 100:.1f}%"
    counts = ", ".join(f"{key} {value}" for key, value in sorted(cache_counts.items())) or "none"
    redis = status.get("redis") or {}
    forwarder = status.get("forwarder") or {}
    mirror = status.get("mirror") or {}
    size = "not measured yet" if mirror.get("size") is None else human_size(mirror["size"])
    limit = f"limit {human_size(mirror['limit'])}" if mirror.get("limit") else "no limit"
    return layout(
        viewer, "Status", tags.h1("Status"),
        tags.section(**{"aria-labelledby": "up-h"})(
            tags.h2("Upstreams", id="up-h"),
            tags.p(f"Forwarder: {forwarder.get('url') or 'none'} ({forwarder.get('note') or forwarder.get('source')}).",
                   id="forwarder"),
            tags.table(tags.thead(tags.tr(tags.th("Upstream", scope="col"), tags.th("State", scope="col"),
                                          tags.th("Requests made", scope="col"))),
                       tags.tbody(*upstream_rows)) if upstream_rows else tags.p("No upstream: a private registry."),
        ),
        tags.section(**{"aria-labelledby": "cache-h"})(
            tags.h2("Cache", id="cache-h"),
            tags.p(f"Hit ratio: {ratio} (served without asking the upstream: {counts})."),
            tags.p(f"Storage used: {storage}."),
            tags.p(f"Mirrored from the upstream: {size} ({limit}); {mirror.get('evictions', 0)} tarballs evicted.",
                   id="mirror"),
            tags.p(f"Redis: {redis.get('state', 'off')}."),
        ),
        tags.section(**{"aria-labelledby": "sync-h"})(
            tags.h2("Sync worker", id="sync-h"),
            *sync_lines(sync),
            tags.table(tags.thead(tags.tr(tags.th("Job", scope="col"), tags.th("Started", scope="col"),
                                          tags.th("Finished", scope="col"), tags.th("Outcome", scope="col"))),
                       tags.tbody(*job_rows)) if job_rows else tags.p("No sync job has run yet."),
        ),
        day,
        firewall,
    )


def version_rows(document: dict[str, Any], tarball_url: Any, sizes: dict[str, int | None],
                 limit: int = 200) -> list[VersionRow]:
    """The versions of ``document``, newest first, at most ``limit`` (any field may hold any JSON)."""
    times = mapping(document.get("time"))
    tag_of: dict[str, list[str]] = {}
    for tag, version in mapping(document.get("dist-tags")).items():
        tag_of.setdefault(text_of(version), []).append(tag)
    versions = mapping(document.get("versions"))
    ordered: Iterable[str] = sorted(versions, key=lambda v: text_of(times.get(v)), reverse=True)[:limit]
    rows = []
    for version in ordered:
        manifest = mapping(versions[version])
        deprecated = manifest.get("deprecated")
        rows.append(VersionRow(
            version=version, published=text_of(times.get(version))[:19].replace("T", " "),
            deprecated=deprecated if isinstance(deprecated, str) and deprecated else None,
            tarball_url=tarball_url(manifest), size=sizes.get(version),
            tags=sorted(tag_of.get(version, [])),
        ))
    return rows
