"""The README and docs/ stay true to the code.

The settings table in docs/configuration.md is generated from the declarations
in nopard/settings/declared.py: after adding or changing a setting, run

    .venv/bin/python -m tests.unit.test_readme

which rewrites the table between its markers; the test below fails until then.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from nopard.settings.config import SETTINGS
from nopard.settings.overrides import OVERRIDABLE
from tests.support import REPO

CONFIGURATION = REPO / "docs" / "configuration.md"
TABLE_START = "<!-- settings table: generated from nopard/settings/declared.py by python -m tests.unit.test_readme -->"
TABLE_END = "<!-- end of the settings table -->"


def settings_table() -> str:
    """The Markdown table of every setting, in declaration order."""
    lines = ["| variable | option | default | meaning |", "|---|---|---|---|"]
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default else "(empty)"
        lines.append(f"| `{setting.env}` | `--{setting.option}` | {default} | {setting.help} |")
    return "\n".join(lines)


def generated_section(text: str) -> str:
    """What docs/configuration.md holds between the table's markers."""
    assert TABLE_START in text and TABLE_END in text, "the settings table's markers are missing"
    return text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()


def write_settings_table(path: Path = CONFIGURATION) -> bool:
    """Rewrite the generated table in ``path``; True if it changed."""
    text = path.read_text()
    before, rest = text.split(TABLE_START, 1)
    after = rest.split(TABLE_END, 1)[1]
    updated = f"{before}{TABLE_START}\n{settings_table()}\n{TABLE_END}{after}"
    path.write_text(updated)
    return updated != text


def test_settings_table_is_generated_from_the_declarations() -> None:
    """docs/configuration.md's table lists every setting, with its variable, option, default and help."""
    assert generated_section(CONFIGURATION.read_text()) == settings_table(), (
        "docs/configuration.md's settings table is out of date: run `.venv/bin/python -m tests.unit.test_readme`"
    )


def test_runtime_settings_are_listed() -> None:
    """The runtime-settings section names exactly the settings an admin may change."""
    text = CONFIGURATION.read_text()
    section = text.split("## Changing settings at runtime", 1)[1].split("\n## ", 1)[0]
    listed = section.split("```", 1)[0]
    named = set(re.findall(r"`(NOPARD_[A-Z0-9_]+)`", listed.split("A value set there", 1)[0]))
    assert named == {"NOPARD_" + name.upper() for name in OVERRIDABLE}


def test_readme_shows_the_test_command() -> None:
    """The README names scripts/test, the command CI runs."""
    assert "scripts/test" in (REPO / "README.md").read_text()
    assert "scripts/test" in (REPO / ".ci" / "run").read_text()


def test_readme_links_point_at_existing_docs() -> None:
    """Every docs/*.md the README links to exists, and every file in docs/ is linked."""
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)", (REPO / "README.md").read_text()))
    assert linked, "the README links to no docs"
    assert {p for p in linked if not (REPO / p).is_file()} == set()
    assert {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")} == linked


def test_docs_links_point_at_existing_files() -> None:
    """Relative links between the docs name files that exist."""
    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_architecture_names_every_package() -> None:
    """docs/architecture.md's module map names every package under nopard/."""
    text = (REPO / "docs" / "architecture.md").read_text()
    packages = sorted(p.parent.relative_to(REPO).as_posix() for p in (REPO / "nopard").rglob("__init__.py"))
    assert [p for p in packages if f"`{p}/`" not in text] == []


if __name__ == "__main__":
    changed = write_settings_table()
    print(f"{CONFIGURATION.relative_to(REPO)}: {'rewritten' if changed else 'already up to date'}")
    sys.exit(0)
