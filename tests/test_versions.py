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
