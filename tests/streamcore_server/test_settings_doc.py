"""The settings tables in the docs come from one source and list every variable Settings reads."""

from __future__ import annotations

import re
from pathlib import Path

from streamcore_server.settings import Settings, variables
from streamcore_server.settings_doc import MEANINGS, default, table, variable

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


class Recording(dict[str, str]):
    """An environment that remembers every variable asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def get(self, key: str, default: object = None) -> None:  # type: ignore[override]
        self.asked.append(key)
        return None


def test_every_variable_settings_reads_has_a_meaning() -> None:
    env = Recording()
    Settings.from_env(env)
    assert set(env.asked) == set(MEANINGS)
    assert {variable(name) for name in Settings.model_fields} == set(MEANINGS)
    assert set(variables().values()) == set(MEANINGS)


def test_settings_read_exactly_the_documented_names() -> None:
    # Lower-case names and the list field's Python name are not variables Settings reads.
    env = {name: "1" for name in MEANINGS} | {"port": "1", "DATABASE_REPLICA_URLS": "1", "X": "1"}
    assert set(Settings.read_environment(env)) == set(MEANINGS)


def test_docs_api_shows_the_table_as_generated() -> None:
    text = (ROOT / "docs" / "API.md").read_text()
    assert START in text and END in text, "docs/API.md lost its generated settings table"
    shown = text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert shown == table(), "regenerate it: python -m streamcore_server settings-table"


def test_the_readme_table_agrees_with_the_source() -> None:
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \|", text, flags=re.M)
    assert len(rows) >= 5
    for name, value in rows:
        assert name in MEANINGS, f"README names {name}, which Settings does not read"
        assert value == default(name), (name, value)
    assert "docs/API.md" in text
