"""The files derived from patches/ (start-up index, README table) are current,
and the start-up index is used only while it matches the TOML files exactly."""

import shutil
import sys
import types

import pytest

import toy
from helpers import REPO
import gradfix
from gradfix import _generate, catalog, catalog_files


def test_index_and_readme_table_are_current():
    patches = str(REPO / "patches")
    assert (REPO / "gradfix" / "catalog.py").read_text() == _generate.catalog_module_text(patches), (
        "run `python -m gradfix._generate`"
    )
    assert (REPO / "gradfix" / "_catalog_entries.py").read_text() == _generate.entries_text(patches), (
        "run `python -m gradfix._generate`"
    )
    assert (REPO / "README.md").read_text() == _generate.readme_text(patches, str(REPO / "README.md")), (
        "run `python -m gradfix._generate`"
    )
    assert (REPO / "patches" / "conformance_summary.json").read_text() == _generate.conformance_summary_text(
        patches), "run `python -m gradfix._generate`"


@pytest.fixture
def fixture_index(tmp_path, monkeypatch):
    """An index compiled from a copy of the fixture catalog, installed as the built-in one."""
    folder = tmp_path / "catalog"
    shutil.copytree(toy.CATALOG, folder)
    block = {}
    exec(_generate.index_block(str(folder)), block)
    for name in ("BUILTIN_FILES", "BUILTIN_TARGETS", "BUILTIN_ROWS"):
        monkeypatch.setattr(catalog, name, block[name])
    entries = types.ModuleType("gradfix._catalog_entries")
    exec(_generate.entries_text(str(folder)), entries.__dict__)
    monkeypatch.setitem(sys.modules, "gradfix._catalog_entries", entries)
    monkeypatch.setattr(gradfix, "_catalog_entries", entries, raising=False)
    monkeypatch.setattr(catalog, "_builtin_entries", {})
    return folder


def test_index_is_used_while_files_match(fixture_index):
    origin, rows = catalog._from_index(str(fixture_index), catalog._toml_names(str(fixture_index)))
    entries = [origin.entry(row) for row in rows]
    parsed = [catalog_files.load_file(f) for f in catalog._toml_files(str(fixture_index))]
    assert [e.to_dict() for e in entries] == [e.to_dict() for e in parsed]


def test_stale_index_is_ignored(fixture_index):
    path = fixture_index / "toy-accumulate-drop.toml"
    path.write_text(path.read_text().replace('fixed_in = "2.0"', 'fixed_in = "2.1"'))
    assert catalog._from_index(str(fixture_index), catalog._toml_names(str(fixture_index))) is None
    (fixture_index / "extra.toml").write_text("")
    assert catalog._from_index(str(fixture_index), catalog._toml_names(str(fixture_index))) is None
