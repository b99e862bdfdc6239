"""ds-pipeline-ga-scale against real DeepSpeed releases on CPU: the worker's model as
a PipelineModule trained with train_batch() (GA 4 micro-batches per step), one
stage in one process and two stages in two. 0.16.0-0.18.2 apply the sum of the
micro-batches (4 times the update) on every stage; 0.18.3-0.19.2 divide the stage
before the last twice (a quarter of its update). Patched, both must match the plain
PyTorch reference and be bit for bit the first fixed release (0.19.3); the releases
around them must be untouched."""

import pytest
from helpers import tiered

from dsrun import config, releases, train, update_error, version, xdist_group

PATCH = "ds-pipeline-ga-scale"
FIRST_FIXED = "0.19.3"
GA, STEPS = 4, 3
# ZeRO-1: two stages run on every release with it (ZeRO-0 makes the stage before the
# last raise on 0.18.3-0.18.4: "Direct calls to tensor.backward() are not supported").
ZERO1 = config(stage=1, offload="none", ga=GA)
ZERO0 = config(stage=0, offload="none", ga=GA)
# Before the bug; variant 1 in backward() (0.16.0-0.16.4) and in _backward_prologue()
# (0.16.5-0.18.2); variant 2 (0.18.3-0.19.2); first fixed. The full tier adds variant 2's newest
# release and the newest release.
RELEASES = tiered(["0.15.2", "0.16.4", "0.18.2", "0.18.3", FIRST_FIXED], full=["0.19.2", "0.19.8"])
SUMMED = lambda r: (0, 16, 0) <= version(r) < (0, 18, 3)  # noqa: E731
DIVIDED_TWICE = lambda r: (0, 18, 3) <= version(r) < (0, 19, 3)  # noqa: E731
EXACT = 1e-6


def released(*wanted):
    return [r for r in releases() if r in wanted]


def hits_by_stage(result):
    return [records[PATCH]["hits"] for records in result["gradfix_by_rank"]]


@pytest.mark.parametrize("release", released(*RELEASES))
def test_two_stages(release):
    reference = train(None, False, ZERO1)
    unpatched, patched = train(release, False, ZERO1, stages=2), train(release, True, ZERO1, stages=2)
    record = patched["gradfix"][PATCH]
    assert patched["stages"] == 2 and len(patched["params"][0]) == len(reference["params"][0])
    if SUMMED(release) or DIVIDED_TWICE(release):
        error = update_error(unpatched, reference)
        assert error > (2.0 if SUMMED(release) else 0.3), f"the unpatched buggy release should be wrong: {error}"
        assert record["state"] == "applied", record
        # The last stage divides its loss (0.16-0.18.2); the first stops the second division (0.18.3-0.19.2).
        assert hits_by_stage(patched) == ([0, STEPS * GA] if SUMMED(release) else [STEPS * GA, 0])
        assert update_error(patched, reference) <= EXACT
        if FIRST_FIXED in releases():
            assert patched["params"] == train(FIRST_FIXED, False, ZERO1, stages=2)["params"]
    else:
        assert record["state"] == "not_needed", record
        assert patched["params"] == unpatched["params"]
        assert update_error(unpatched, reference) <= EXACT


@pytest.mark.parametrize("release", released(*tiered(("0.16.4", "0.18.3"), full=("0.18.2",))))
def test_one_stage(release):
    """One stage is the last stage: 0.16.0-0.18.2 sum the micro-batches there too;
    from 0.18.3 it is right and the patch must leave it alone. (Both sub-variants of
    0.16.0-0.18.2 and the oldest of 0.18.3-0.19.2: one stage costs CI time and the
    two-stage test already covers the other releases.)"""
    reference = train(None, False, ZERO0)
    unpatched, patched = train(release, False, ZERO0, stages=1), train(release, True, ZERO0, stages=1)
    record = patched["gradfix"][PATCH]
    if SUMMED(release):
        assert update_error(unpatched, reference) > 2.0
        assert record["state"] == "applied" and record["hits"] == STEPS * GA, record
        assert update_error(patched, reference) <= EXACT
        if FIRST_FIXED in releases():
            assert patched["params"] == train(FIRST_FIXED, False, ZERO0, stages=1)["params"]
    else:
        assert record["state"] == ("applied" if DIVIDED_TWICE(release) else "not_needed"), record
        assert record["hits"] == 0
        assert patched["params"] == unpatched["params"]
        assert update_error(unpatched, reference) <= EXACT


@pytest.mark.parametrize("release", [xdist_group(r) for r in released("0.18.2")])  # in 0.18.2's batch
def test_plain_engines_are_left_alone(release):
    """The patch wraps DeepSpeedEngine.backward on 0.16-0.18.2: an engine that is not a
    pipeline must pass through it unchanged."""
    options = config(stage=1, offload="none", ga=GA)
    patched, unpatched = train(release, True, options), train(release, False, options)
    assert patched["gradfix"][PATCH]["hits"] == 0
    assert patched["params"] == unpatched["params"]
