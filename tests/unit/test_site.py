"""What the access log is allowed to show."""

from nopard.web.site import redact_path


def test_tokens_in_paths_are_redacted() -> None:
    """The logout path's token never reaches the log; other paths are kept."""
    assert redact_path("/-/user/token/npd_secret") == "/-/user/token/<redacted>"
    assert redact_path("/-/user/token/npd_secret?x=1") == "/-/user/token/<redacted>?x=1"
    assert redact_path("/@scope%2fname") == "/@scope%2fname"
