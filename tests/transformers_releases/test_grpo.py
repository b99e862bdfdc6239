"""trl-grpo-window-normaliser and trl-grpo-truncated-denominator with real TRL releases:
GRPOTrainer's own generation, scoring and training step on CPU (grpo_worker.py), loss
dapo, one optimizer step of SGD. The applied update is compared with a plain PyTorch
reference computed from the generation batch the step trained on, normalised as the
fixed TRL (1.9.1) normalises; the fixed releases match it without gradfix. Every
release here generates the same completions (same seed, same sampling code), so the
runs differ only in their normalisation.
"""

import json
import os
from pathlib import Path

import pytest
from helpers import tiered
from tfrun import BUG, MATCH, affected, grouped, plan_jobs, run_planned, states

WORKER = Path(__file__).resolve().parent / "grpo_worker.py"
WINDOW, TRUNCATED = "trl-grpo-window-normaliser", "trl-grpo-truncated-denominator"
SPLIT = ("--steps-per-generation", "4", "--accumulation", "2")  # the generation batch spans two windows


def releases():
    """TRL release -> folder that shadows the venv's ("" for the venv's own)."""
    return json.loads(os.environ.get("GRADFIX_TRL_RELEASES", "{}"))


pytestmark = pytest.mark.skipif(not releases(), reason="run through `nox -s transformers` (GRADFIX_TRL_RELEASES)")


def matrix(patch=None):
    from packaging.version import Version

    chosen = [r for r in releases() if patch is None or patch in affected(r, "trl")]
    return sorted(chosen, key=Version)


def grpo(release, patched, *options, ranks=1):
    result = run_planned(WORKER, [releases()[release]], patched, options, ranks=ranks)
    assert result["trl"] == release
    return result


def plan(releases_, *option_lists):
    """Train these one-rank runs of a release in one process (tfrun.plan_jobs)."""
    for release in releases_:
        plan_jobs(WORKER, [releases()[release]], option_lists)


# CI: the oldest affected release (the transformers 4 line), the newest affected one and the
# first fixed one; the full tier adds 1.8.0 and the newest release.
WINDOW_RUN = [r for r in matrix() if r in tiered(("0.22.2", "1.9.0", "1.9.1"), full=("1.8.0", *matrix()[-1:]))]
plan(WINDOW_RUN, SPLIT)


@pytest.mark.parametrize("release", grouped(WINDOW_RUN, package="trl"))
def test_window_normaliser(release):
    unpatched, patched = grpo(release, False, *SPLIT), grpo(release, True, *SPLIT)
    if WINDOW in affected(release, "trl"):
        assert abs(unpatched["update_scale"] - 0.5) < MATCH, unpatched  # GA / steps_per_generation
        assert patched["gradfix"][WINDOW] == {"state": "applied", "hits": 2}  # both micro-batches of the window
    else:
        assert unpatched["update_error"] < MATCH, unpatched
        assert patched["update_error"] == unpatched["update_error"]
    assert patched["update_error"] < MATCH, patched
    patches = {WINDOW, TRUNCATED}
    expected = affected(release, "trl")
    assert states(patched, patches & expected) == {pid: "applied" for pid in patches & expected}
    assert states(patched, patches - expected) == {pid: "not_needed" for pid in patches - expected}


# CI: the newest affected release and the first fixed one (1.9.1: 1.9.0 still has the window
# bug, which this run would also show); the full tier adds the oldest and the newest release.
TRUNCATED_RUN = [r for r in matrix() if r in tiered((*matrix(TRUNCATED)[-1:], "1.9.1"),
                                                   full=(*matrix(TRUNCATED)[:1], *matrix()[-1:]))]
plan(TRUNCATED_RUN, (*SPLIT, "--mask-truncated"))


@pytest.mark.parametrize("release", grouped(TRUNCATED_RUN, package="trl"))
def test_truncated_completions_leave_the_denominator(release):
    options = (*SPLIT, "--mask-truncated")
    unpatched, patched = grpo(release, False, *options), grpo(release, True, *options)
    assert patched["truncated"] > 0, patched  # some completions hit max_completion_length and were masked
    assert patched["update_error"] < MATCH, patched
    if TRUNCATED in affected(release, "trl"):
        assert unpatched["update_error"] > BUG, unpatched
        assert patched["gradfix"][TRUNCATED] == {"state": "applied", "hits": 1}  # one generation batch
        assert patched["num_items_in_batch"][0] < unpatched["num_items_in_batch"][0]
    else:
        assert unpatched["update_error"] == patched["update_error"]


ONE_WINDOW = ("--steps-per-generation", "2", "--accumulation", "2")
plan(matrix(WINDOW)[:1], ONE_WINDOW)


@pytest.mark.parametrize("release", grouped(matrix(WINDOW)[:1], package="trl"))
def test_one_window_per_generation_is_left_alone(release):
    """steps_per_generation == gradient_accumulation_steps: the count already spans one window."""
    unpatched, patched = grpo(release, False, *ONE_WINDOW), grpo(release, True, *ONE_WINDOW)
    assert unpatched["update_error"] < MATCH
    assert patched["update"] == unpatched["update"]
    assert patched["gradfix"][WINDOW] == {"state": "applied", "hits": 0}


@pytest.mark.parametrize("release", grouped((r for r in matrix(TRUNCATED) if not r.startswith("0.")), package="trl")[:1])
def test_two_ranks_match_the_fixed_release(release):
    """Two data-parallel ranks (the truncated-token recount is gathered over ranks): the
    patched release applies exactly the update of the first fixed release, 1.9.1, to the
    same completions (rank 0's parameters; the plain reference covers one rank only)."""
    if "1.9.1" not in releases():
        pytest.skip("TRL 1.9.1 is not in the matrix")
    options = (*SPLIT, "--mask-truncated")
    fixed = grpo("1.9.1", False, *options, ranks=2)
    unpatched, patched = grpo(release, False, *options, ranks=2), grpo(release, True, *options, ranks=2)
    assert patched["truncated"] == fixed["truncated"] > 0
    assert patched["update"] == fixed["update"]
    assert unpatched["update"] != fixed["update"]
    assert patched["gradfix"][TRUNCATED] == {"state": "applied", "hits": 1}
