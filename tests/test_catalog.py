from pathlib import Path

import pytest

import toy
from gradfix import catalog, catalog_files, implementation

VALID = {
    "id": "demo-bug",
    "package": "demo",
    "affected": ">=1.0,<2.0",
    "fixed_in": "2.0",
    "summary": "s",
    "trigger": "t",
    "effect": "e",
    "upstream": ["demo#1"],
    "implementation": "gftoy_fixes.accumulate_drop",
    "since": "0.1.0",
}


def _toml(data):
    lines = []
    for key, value in data.items():
        if isinstance(value, list):
            lines.append(f"{key} = [{', '.join(repr(v) for v in value)}]")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def write(folder: Path, data, name=None) -> Path:
    path = folder / f"{name or data['id']}.toml"
    path.write_text(_toml(data))
    return path


def test_valid_entry(tmp_path):
    entry = catalog_files.load_file(write(tmp_path, VALID))
    assert entry.id == "demo-bug" and entry.package == "demo"
    assert entry.affected_set.contains("1.5") and not entry.affected_set.contains("2.0")
    assert entry.affected == ">=1.0,<2.0"  # lower bound first, as written
    assert entry.fixed_in == "2.0" and entry.upstream == ("demo#1",)
    assert entry.upgrade_advice() == "Upgrading to demo >=2.0 fixes the bug upstream"


def test_unpatched_releases_say_why(tmp_path):
    entry = catalog_files.load_file(write(tmp_path, dict(VALID, unpatched=["<1.2: the old loss class"])))
    assert entry.unpatched_reason("1.1") == "the old loss class" and entry.unpatched_reason("1.5") == ""
    for bad, words in ((["<1.2"], "SPECIFIERS: why"), (["<<1: x"], "specifier"), (["<1.2:  "], "does not say why")):
        with pytest.raises(catalog_files.CatalogError) as info:
            catalog_files.load_file(write(tmp_path, dict(VALID, unpatched=bad)))
        assert info.value.problem.field == "unpatched" and words in info.value.problem.message


def test_bug_without_an_upstream_fix(tmp_path):
    entry = catalog_files.load_file(write(tmp_path, dict(VALID, affected=">=1.0", fixed_in="none")))
    assert entry.fixed_in == catalog.UNFIXED and entry.affected_set.contains("99.0")
    assert entry.upgrade_advice() == "No demo release fixes this bug yet"


@pytest.mark.parametrize(
    "change,field,words",
    [
        ({"affected": ">=1.0,<<2"}, "affected", "specifier"),
        ({"affected": ""}, "affected", "empty"),
        ({"fixed_in": "banana"}, "fixed_in", "PEP 440 version"),
        ({"fixed_in": "1.5"}, "fixed_in", "inside the affected range"),
        ({"upstream": []}, "upstream", "non-empty list"),
        ({"upstream": "demo#1"}, "upstream", "must be a list"),
        ({"implementation": "not a module"}, "implementation", "dotted module path"),
        ({"package": "bad name!"}, "package", "distribution name"),
        ({"id": "Demo_Bug"}, "id", "lowercase"),
        ({"since": 1}, "since", "must be a str"),
        ({"colour": "blue"}, "colour", "unknown field"),
    ],
)
def test_invalid_field_is_named(tmp_path, change, field, words):
    data = dict(VALID, **change)
    path = write(tmp_path, data, name="demo-bug")
    with pytest.raises(catalog_files.CatalogError) as info:
        catalog_files.load_file(path)
    assert info.value.problem.field == field
    assert words in info.value.problem.message
    assert str(path) in str(info.value) and repr(field) in str(info.value)


def test_missing_field_and_id_mismatch(tmp_path):
    data = dict(VALID)
    del data["effect"]
    with pytest.raises(catalog_files.CatalogError, match="'effect': missing"):
        catalog_files.load_file(write(tmp_path, data))
    with pytest.raises(catalog_files.CatalogError, match="must equal the file name 'other'"):
        catalog_files.load_file(write(tmp_path, VALID, name="other"))


def test_unreadable_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("id = \n")
    with pytest.raises(catalog_files.CatalogError, match="cannot read"):
        catalog_files.load_file(path)


def test_load_skips_bad_files_and_duplicates(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    write(first, VALID)
    write(second, VALID)  # same id twice
    write(first, dict(VALID, id="bad-one", affected="nonsense"))
    loaded = catalog.load([str(first), str(second), str(tmp_path / "missing")], include_builtin=False)
    assert loaded.ids == ("demo-bug",)
    messages = [str(p) for p in loaded.problems]
    assert any("bad-one.toml" in m and "'affected'" in m for m in messages)
    assert any("already defined" in m for m in messages)
    assert any("does not exist" in m for m in messages)


def test_builtin_catalog_is_valid_and_matches_the_fix_modules():
    builtin = catalog.load()
    assert builtin.problems == ()
    assert implementation.coverage_problems(builtin.entries, "gradfix.fixes") == []


def test_fixture_catalog_matches_its_fix_modules():
    fixtures = catalog.load([str(toy.CATALOG), str(toy.BROKEN_CATALOG), str(toy.UNCORRECTABLE_CATALOG)],
                            include_builtin=False)
    assert fixtures.problems == ()
    assert sorted(fixtures.ids) == ["toy-accumulate-drop", "toy-broken-apply", "toy-uncorrectable"]
    assert implementation.coverage_problems(fixtures.entries, "gftoy_fixes") == []


def test_coverage_check_finds_both_directions(tmp_path):
    fixtures = catalog.load([str(toy.CATALOG)], include_builtin=False)
    # broken_apply and uncorrectable exist as modules but the catalog above does not name them.
    assert implementation.coverage_problems(fixtures.entries, "gftoy_fixes") == [
        "gftoy_fixes.broken_apply has no catalog entry (add patches/<id>.toml naming it)",
        "gftoy_fixes.uncorrectable has no catalog entry (add patches/<id>.toml naming it)",
    ]
    ghost = catalog_files.load_file(write(tmp_path, dict(VALID, implementation="gftoy_fixes.ghost")))
    problems = implementation.coverage_problems([ghost], "gftoy_fixes")
    assert any("cannot import gftoy_fixes.ghost" in p for p in problems)


def test_folder_index_is_used_while_the_files_are_unchanged(tmp_path, run_python):
    """`gradfix index FOLDER`: start-up reads the recorded entries instead of parsing TOML
    (no TOML parser is even imported), and parses again as soon as a file changes."""
    folder = tmp_path / "extra"
    folder.mkdir()
    write(folder, VALID)
    assert catalog_files.write_folder_index(str(folder)).problems == ()
    probe = ("import sys\nimport gradfix\nfrom gradfix import catalog\n"
             "entry = next(e for e in catalog.load([sys.argv[1]], include_builtin=False).entries)\n"
             "print('SUMMARY', repr(entry.summary))\n"
             "print('TOML', 'tomllib' in sys.modules or 'tomli' in sys.modules)\n")  # tomli before 3.11
    indexed = run_python(None, argv=["-c", probe, str(folder)], catalogs=(folder,))
    assert indexed.value("SUMMARY") == "s" and indexed.value("TOML") is False

    write(folder, dict(VALID, summary="changed"))  # not re-indexed: the index no longer matches
    parsed = run_python(None, argv=["-c", probe, str(folder)], catalogs=(folder,))
    assert parsed.value("SUMMARY") == "changed" and parsed.value("TOML") is True


def test_folder_index_keeps_every_field(tmp_path):
    """Start-up decodes only the decision fields; the rest come from the index on first use,
    equal to what parsing the files gives."""
    folder = tmp_path / "extra"
    folder.mkdir()
    write(folder, dict(VALID, unpatched=[">=1.0,<1.1: reason"]))
    parsed = [e.to_dict() for e in catalog_files.write_folder_index(str(folder)).entries]
    origin, rows = catalog._from_folder_index(str(folder))
    indexed = [origin.entry(row) for row in rows]
    assert [e.to_dict() for e in indexed] == parsed
    assert indexed[0].path == str(folder / "demo-bug.toml") and indexed[0].summary == "s"


def test_unchecked_folder_index_is_trusted_and_doctor_tells_when_it_is_stale(tmp_path):
    """`gradfix index --unchecked`: start-up reads the index without looking at the files
    (the contract: index again after changing the folder); folder_index_state, which
    `gradfix doctor` reports, names what changed since."""
    folder = tmp_path / "extra"
    folder.mkdir()
    write(folder, VALID)
    write(folder, dict(VALID, id="demo-gone"))
    assert catalog_files.write_folder_index(str(folder), checked=False).problems == ()
    assert catalog_files.folder_index_state(str(folder)) == "unchecked"
    write(folder, dict(VALID, summary="changed"))  # edited, not re-indexed
    write(folder, dict(VALID, id="demo-other"))
    (folder / "demo-gone.toml").unlink()
    loaded = catalog.load([str(folder)], include_builtin=False)
    assert [(e.id, e.summary) for e in loaded.entries] == [("demo-bug", "s"), ("demo-gone", "s")]
    assert catalog_files.folder_index_state(str(folder)) == (
        "unchecked, stale: demo-other.toml added, demo-gone.toml removed, demo-bug.toml edited")
    assert catalog_files.write_folder_index(str(folder)).problems == ()  # checked from now on
    assert catalog_files.folder_index_state(str(folder)) == "checked"
    assert [e.id for e in catalog.load([str(folder)], include_builtin=False).entries] == ["demo-bug", "demo-other"]


def test_an_index_of_another_format_is_ignored(tmp_path):
    import marshal

    folder = tmp_path / "extra"
    folder.mkdir()
    write(folder, VALID)
    (folder / catalog.FOLDER_INDEX).write_bytes(marshal.dumps({"format": 1, "stamps": {}, "entries": []}))
    assert [e.id for e in catalog.load([str(folder)], include_builtin=False).entries] == ["demo-bug"]


def test_folder_with_errors_is_not_indexed(tmp_path):
    folder = tmp_path / "extra"
    folder.mkdir()
    write(folder, dict(VALID, affected="not a specifier"))
    assert catalog_files.write_folder_index(str(folder)).problems
    assert not (folder / catalog.FOLDER_INDEX).exists()
