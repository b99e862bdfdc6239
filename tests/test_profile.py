"""GRADFIX_PROFILE: the patch set of an earlier gradfix release, against the toy package
gftoy and its fixture patch (since 0.1.0)."""

import pytest
from packaging.version import Version

import toy
from gradfix import catalog_files, config, profile
from gradfix import __version__ as VERSION
from toy import PATCH_ID, WORKLOAD

STATUS = """
import json, gradfix
print("STATUS", json.dumps({s.id: [s.state, s.reason] for s in gradfix.status()}))
"""


def entry(tmp_path, **changes):
    """The fixture catalog entry with ``changes`` applied, validated like any catalog file."""
    source = (toy.CATALOG / f"{PATCH_ID}.toml").read_text()
    lines = [line for line in source.splitlines() if line.split(" = ")[0] not in changes]
    lines += [f"{key} = {value}" for key, value in changes.items()]
    folder = tmp_path / "catalog"
    folder.mkdir(exist_ok=True)
    path = folder / f"{PATCH_ID}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_parse_valid_bad_and_newer_values():
    assert config.parse({"GRADFIX_PROFILE": f" {VERSION} "}).profile == Version(VERSION)
    assert config.parse({}).profile is None and not config.parse({}).problems
    bad = config.parse({"GRADFIX_PROFILE": "banana"})
    assert bad.profile is None
    assert "GRADFIX_PROFILE='banana' is not a gradfix version" in bad.problems[0]
    newer = config.parse({"GRADFIX_PROFILE": "999.0"})
    assert newer.profile is None
    assert "newer than the installed gradfix" in newer.problems[0] and "gradfix==999.0" in newer.problems[0]


def test_membership_follows_since_and_numerics_changed(tmp_path):
    shipped = catalog_files.load_file(entry(tmp_path))  # since 0.1.0
    assert profile.exclusion(shipped, None) is None
    assert profile.exclusion(shipped, Version("0.1.0")) is None
    assert "added in gradfix 0.1.0" in profile.exclusion(shipped, Version("0.0.9"))
    changed = catalog_files.load_file(entry(tmp_path, numerics_changed='["0.3.0"]'))
    assert changed.numerics_changed == ("0.3.0",)
    assert "gradfix 0.3.0 changed what this patch computes" in profile.exclusion(changed, Version("0.2.0"))
    assert profile.exclusion(changed, Version("0.3.0")) is None


@pytest.mark.parametrize("value,words", [('"0.3.0"', "list of gradfix versions"),
                                         ('["banana"]', "PEP 440 version"),
                                         ('["0.1.0"]', "later than since")])
def test_bad_numerics_changed_is_a_catalog_error(tmp_path, value, words):
    with pytest.raises(catalog_files.CatalogError, match=words):
        catalog_files.load_file(entry(tmp_path, numerics_changed=value))


def test_patch_outside_the_profile_is_left_alone(run_python):
    result = run_python(WORKLOAD + STATUS, env={"GRADFIX": "1", "GRADFIX_PROFILE": "0.0.1"})
    assert result.returncode == 0
    state, reason = result.value("STATUS")[PATCH_ID]
    assert state == "disabled" and reason == "not in GRADFIX_PROFILE=0.0.1 (added in gradfix 0.1.0)"
    unpatched = run_python(WORKLOAD, env={"GRADFIX": "0"}).value("RESULT")
    assert result.value("RESULT") == unpatched  # the buggy release computes as without gradfix
    assert "gradfix 0.1.0 (profile 0.0.1)" in result.stderr


def test_patch_whose_numerics_changed_later_is_left_alone(run_python, tmp_path):
    folder = entry(tmp_path, since='"0.0.1"', numerics_changed='["0.1.0"]').parent
    result = run_python(WORKLOAD + STATUS, catalogs=(folder,), env={"GRADFIX": "1", "GRADFIX_PROFILE": "0.0.5"})
    state, reason = result.value("STATUS")[PATCH_ID]
    assert state == "disabled" and "install gradfix==0.0.5" in reason
    result = run_python(WORKLOAD + STATUS, catalogs=(folder,), env={"GRADFIX": "1", "GRADFIX_PROFILE": "0.1.0"})
    assert result.value("STATUS")[PATCH_ID][0] == "applied"


def test_bad_profile_warns_once_and_keeps_the_patch_set(run_python):
    result = run_python(WORKLOAD + STATUS, env={"GRADFIX": "1", "GRADFIX_PROFILE": "latest"})
    assert result.returncode == 0
    assert result.stderr.count("GRADFIX_PROFILE='latest' is not a gradfix version") == 1
    assert result.value("STATUS")[PATCH_ID][0] == "applied"


def test_status_command_prints_the_profile(run_python):
    result = run_python(None, argv=["-m", "gradfix", "status"], env={"GRADFIX_PROFILE": VERSION})
    assert f"gradfix {VERSION}: patch set of gradfix {VERSION} (GRADFIX_PROFILE)" in result.stdout
    result = run_python(None, argv=["-m", "gradfix", "status"])
    assert "its own patch set (GRADFIX_PROFILE unset)" in result.stdout

