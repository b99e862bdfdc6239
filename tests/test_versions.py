import importlib.metadata
import sys

import toy
from gradfix import versions


def test_agrees_with_importlib_metadata_for_every_installed_distribution():
    names = {dist.metadata["Name"] for dist in importlib.metadata.distributions()}
    assert {"pytest", "packaging", "wrapt", "gradfix"} <= names
    ours = versions.installed_versions(names)
    assert ours == {name: importlib.metadata.version(name) for name in names}


def test_names_are_normalised():
    assert versions.normalise("Flash-Attn") == versions.normalise("flash_attn") == versions.normalise("flash.attn")
    assert versions.normalise("a--b__c") == "a_b_c"


def test_first_installation_on_the_path_wins(tmp_path, monkeypatch):
    first = toy.install(tmp_path, "1.4", "buggy")
    second = toy.install(tmp_path, "2.0", "fixed")
    monkeypatch.setattr(sys, "path", [str(first), str(second)] + sys.path)
    assert versions.installed_version("gftoy") == "1.4"
    assert versions.installed_version("GFToy") == "1.4"
    assert versions.installed_version("no-such-distribution") is None


def test_scan_sees_top_level_modules_in_listed_folders(tmp_path, monkeypatch):
    import _imp

    (tmp_path / "folderpkg").mkdir()
    (tmp_path / "plainmodule.py").write_text("")
    (tmp_path / ("extmodule" + _imp.extension_suffixes()[0])).write_text("")
    monkeypatch.setattr(sys, "path", [str(tmp_path)] + sys.path)
    found = versions.scan(["no-such-distribution"], ["folderpkg", "plainmodule", "extmodule", "absentmodule"])
    assert found.modules == {"folderpkg", "plainmodule", "extmodule"}
    assert found.searched == {"folderpkg", "plainmodule", "extmodule", "absentmodule"} and found.complete


def test_scan_of_a_zip_archive_is_incomplete(tmp_path, monkeypatch):
    archive = tmp_path / "archive.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip file
    monkeypatch.setattr(sys, "path", [str(archive)] + sys.path)
    assert versions.scan(["no-such-distribution"], ["folderpkg"]).complete is False


def test_scan_stops_when_every_distribution_is_found_and_then_claims_no_module(tmp_path, monkeypatch):
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "folderpkg").mkdir()
    monkeypatch.setattr(sys, "path", sys.path + [str(tmp_path / "later")])
    found = versions.scan(["pytest"], ["folderpkg"])
    assert found.versions["pytest"] and found.searched == set() and "folderpkg" not in found.modules


def test_a_distribution_installed_after_the_import_system_listed_its_folder_is_seen(tmp_path, monkeypatch):
    """The scan reuses the import system's cached listing of a folder only while the
    folder's modification time is the one recorded with it."""
    import importlib
    import time

    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "gradfix_early_module.py").write_text("")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "gradfix_early_module", raising=False)
    importlib.import_module("gradfix_early_module")  # the folder's finder lists and caches it
    assert versions.installed_version("gradfix-late") is None
    time.sleep(0.05)  # a later timestamp than the cached listing's
    metadata = folder / "gradfix_late-1.0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: gradfix-late\nVersion: 1.0\n\n")
    assert versions.installed_version("gradfix-late") == "1.0"


def test_every_spelling_of_a_name_gets_its_version():
    found = versions.installed_versions(["pytest", "PyTest", "PYTEST"])
    assert found["pytest"] and found["pytest"] == found["PyTest"] == found["PYTEST"]
