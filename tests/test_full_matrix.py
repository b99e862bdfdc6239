"""The full tier's record (patches/full_matrix.json, written by `python -m nox -s full_matrix`):
the release matrix that CI does not run in full has been run, every test passed, and it ran
with every patch the catalog now has for its frameworks. A patch added since the record
fails here until the full matrix is run again (as a release sweep does for the sweep's
table)."""

import json

import pytest
from helpers import REPO

from gradfix import catalog

RECORD = REPO / "patches" / "full_matrix.json"
# The framework sessions with releases or tests that only the full tier runs, and the
# packages whose patches each proves.
SESSIONS = {"deepspeed": {"deepspeed"}, "openrlhf": {"openrlhf"},
            "transformers": {"transformers", "accelerate", "trl"}, "llamafactory": {"llamafactory"}}


def record():
    assert RECORD.exists(), "patches/full_matrix.json is missing: run `python -m nox -s full_matrix`"
    return json.loads(RECORD.read_text())


@pytest.mark.parametrize("session", SESSIONS)
def test_the_full_tier_ran_and_passed(session):
    runs = record()
    assert session in runs, f"no full-tier run of {session}: run `python -m nox -s full_matrix -- {session}`"
    run = runs[session]
    assert run["passed"] and not run["failed"], f"{session} failed in the full tier: {run['failed']}"
    assert all(run["releases"].values()), run["releases"]


@pytest.mark.parametrize("session", SESSIONS)
def test_the_full_tier_saw_every_patch(session):
    run = record().get(session, {"patches": []})
    current = {e.id for e in catalog.load([str(REPO / "patches")], include_builtin=False).entries
               if e.package in SESSIONS[session]}
    newer = sorted(current - set(run["patches"]))
    assert not newer, f"{newer} are newer than the full tier's run of {session}: run " \
                      f"`python -m nox -s full_matrix -- {session}` and commit patches/full_matrix.json"
