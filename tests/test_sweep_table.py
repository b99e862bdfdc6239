"""The release sweep's table (patches/sweep.json, written by tests/release_sweep/sweep.py)
agrees with the catalog: no release outside a patch's affected range needs it, every
release inside the range gets it (or the catalog explains why not, or the release does not
import in the sweep's environment, which the support table then says), the sweep went around
the first fixed release, and it covered every patch of each package it swept."""

import pytest
from helpers import REPO
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from gradfix import _generate, catalog

SWEEP = _generate.load_sweep(str(REPO / "patches"))
ENTRIES = [e for e in catalog.load([str(REPO / "patches")], include_builtin=False).entries if e.package in SWEEP]


def releases(package):
    return SWEEP[package]["releases"]


def test_the_sweep_exists():
    assert SWEEP, "patches/sweep.json is missing: run `python -m nox -s sweep`"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.id)
def test_every_swept_release_has_a_verdict(entry):
    missing = [r for r, verdicts in releases(entry.package).items() if entry.id not in verdicts]
    assert not missing, f"{entry.id} is newer than the sweep of {missing}: rerun the sweep for {entry.package}"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.id)
def test_verdicts_agree_with_the_affected_range(entry):
    affected = SpecifierSet(entry.affected)
    wrong = []
    for release, verdicts in releases(entry.package).items():
        verdict = _generate.verdict_name(verdicts[entry.id])
        inside = Version(release) in affected
        if inside and _generate.not_importable(verdicts[entry.id]):
            continue  # not judged here; the support table lists these releases
        if inside and verdict != "applies" and not entry.unpatched_reason(release):
            wrong.append(f"{release} is in {entry.affected} but the gates say {verdict}: {verdicts[entry.id]}")
        if not inside and verdict != "not needed":
            wrong.append(f"{release} is outside {entry.affected} but the gates say {verdict}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.id)
def test_the_sweep_covers_the_range_and_the_fix(entry):
    checked = set(map(Version, releases(entry.package)))
    assert any(r in SpecifierSet(entry.affected) for r in checked), f"no release of {entry.affected} was checked"
    if entry.fixed_in != catalog.UNFIXED:
        assert Version(entry.fixed_in) in checked, f"the first fixed release {entry.fixed_in} was not checked"
