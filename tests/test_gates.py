import pytest
from packaging.specifiers import SpecifierSet

from gradfix.gates import VersionVerdict, plausibly_affected, source_fingerprint, version_gate

AFFECTED = SpecifierSet(">=0.15.2,<0.19.0")


@pytest.mark.parametrize(
    "installed,verdict",
    [
        ("0.15.2", VersionVerdict.AFFECTED),
        ("0.18.9", VersionVerdict.AFFECTED),
        ("0.18.9.post1", VersionVerdict.AFFECTED),
        ("0.15.1", VersionVerdict.UNAFFECTED),
        ("0.19.0", VersionVerdict.UNAFFECTED),
        ("0.18.10+abc", VersionVerdict.UNCERTAIN),  # local build: the code decides
        ("0.19.0.dev0", VersionVerdict.UNCERTAIN),  # dev build: the code decides
        ("0.19.0rc1", VersionVerdict.UNCERTAIN),
        ("not-a-version", VersionVerdict.UNCERTAIN),
        (None, VersionVerdict.UNCERTAIN),
    ],
)
def test_version_gate(installed, verdict):
    assert version_gate(installed, AFFECTED) is verdict


def test_plausibly_affected_for_uncertain_versions():
    assert plausibly_affected("0.18.10+abc", AFFECTED)
    assert not plausibly_affected("0.19.0.dev0", AFFECTED)  # a pre-release of the fixed release
    assert not plausibly_affected("0.19.1+abc", AFFECTED)
    assert plausibly_affected(None, AFFECTED)


class Original:
    def step(self, x):
        """Docstring."""
        return x + 1  # comment


class Reformatted:
    def step(self, x):
        return (x
                + 1)


class Changed:
    def step(self, x):
        return x + 2


def test_source_fingerprint_ignores_layout_not_code():
    original = source_fingerprint(Original.step)
    assert source_fingerprint(Reformatted.step) == original
    assert source_fingerprint(Changed.step) != original
