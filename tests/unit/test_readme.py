"""The README stays true to the code."""

from __future__ import annotations

from nopard.settings.config import SETTINGS
from tests.support import REPO


def test_settings_table_lists_every_setting_with_its_default() -> None:
    """Each setting has a README row with its variable, option, default and help."""
    readme = (REPO / "README.md").read_text()
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default else "(empty)"
        row = f"| `{setting.env}` | `--{setting.option}` | {default} | {setting.help} |"
        assert row in readme, row


def test_readme_shows_the_test_command() -> None:
    """The README names scripts/test, the command CI runs."""
    assert "scripts/test" in (REPO / "README.md").read_text()
    assert "scripts/test" in (REPO / ".ci" / "run").read_text()
