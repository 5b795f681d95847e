"""What the access log is allowed to show, and what it shows of a refused request."""

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.web.resource import Resource

from nopard.settings.config import LiveSettings, load_settings
from nopard.web.site import _SECRET_IN_PATH, NopardSite, redact_path


def test_tokens_in_paths_are_redacted() -> None:
    """The logout path's token never reaches the log; other paths are kept."""
    assert redact_path("/-/user/token/npd_secret") == "/-/user/token/<redacted>"
    assert redact_path("/-/user/token/npd_secret?x=1") == "/-/user/token/<redacted>?x=1"
    assert redact_path("/@scope%2fname") == "/@scope%2fname"


@given(st.lists(st.sampled_from(["/-/user/token/", "/-/npm/v1/tokens/token/", "/-/v1/login/", "/-/v1/done/",
                                  "/-/", "/-/v1/", "/-/user/", "npd_secret", "/", "?", "#", "pkg", "%2f"]), max_size=6))
def test_redacting_a_path_skips_only_paths_with_no_token(parts: list[str]) -> None:
    """The quick look for a token path never lets one through: the same as always substituting."""
    path = "".join(parts)
    assert redact_path(path) == _SECRET_IN_PATH.sub(r"\1<redacted>", path)


def test_a_refused_body_is_logged_with_its_method_and_path() -> None:
    """The 413 goes out before Twisted gives the request its method and path; the access line
    has them all the same (from the channel's request line, not Twisted's private fields)."""
    events: list[dict[str, Any]] = []
    settings = LiveSettings(load_settings({}, {"NOPARD_MAX_BODY_SIZE": "10"}, cwd="/srv"))
    site = NopardSite(Resource(), settings, Clock(), Logger(observer=events.append))
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5984))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    channel.makeConnection(transport)
    channel.dataReceived(b"PUT /-/user/token/npd_secret HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    [line] = [event for event in events if event.get("event") == "access"]
    assert (line["method"], line["path"], line["status"]) == ("PUT", "/-/user/token/<redacted>", 413)
